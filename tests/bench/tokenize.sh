#!/usr/bin/env bash
# Tokenizer benchmarks (see docs/benchmarks.md), on a synthetic corpus of about 140 MB:
#   1. `tokenizer` training (vocab 8192): wall time and peak RSS of the build;
#   2. `tokenize` throughput in MB/s of document text, against the Python `tokenizers`
#      package's encode_batch on the same tokenizer.json and the same text, same machine
#      (the Python ids are also checked against ausa's token files).
# Usage: tests/bench/tokenize.sh [WORKDIR] [CORPUS_MB]
# Needs python3 with venv; creates .venv with tokenizers and pyarrow if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
corpus_mb=${2:-140}
mkdir -p "$work"
store=$work/store

cargo build --release -q -p ausa-cli
ausa=$PWD/target/release/ausa
venv=$PWD/.venv
if ! "$venv/bin/python" -c "import tokenizers, pyarrow" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q tokenizers pyarrow
fi
py=$venv/bin/python
peer=$PWD/tests/bench/tokenize_peer.py

# `ausa show --json` field of a built stage, e.g. `show_field dag.toml:corpus stats.bytes`.
show_field() {
  "$ausa" show "$1" --store "$store" --json |
    "$py" -c "import json,sys; v=json.load(sys.stdin)['manifest']
for k in sys.argv[1].split('.'): v=v[k]
print(v)" "$2"
}

echo "== synthetic text: bytes per document"
cat >"$work/probe.toml" <<EOF
description = "probe of the synthetic generator's document length"
[stages.corpus]
kind = "corpus"
docs = 4000
EOF
"$ausa" build "$work/probe.toml" --store "$store" -q
probe_bytes=$(show_field "$work/probe.toml:corpus" stats.bytes)
bytes_per_doc=$((probe_bytes / 4000))
docs=$((corpus_mb * 1000000 / bytes_per_doc))
echo "$bytes_per_doc bytes/doc -> $docs documents for $corpus_mb MB"

dag=$work/bench.toml
cat >"$dag" <<EOF
description = "tokenizer benchmark: synthetic corpus, 8k byte-level BPE, token ids"
[stages.corpus]
kind = "corpus"
docs = $docs
[stages.tokenizer]
kind = "tokenizer"
inputs = { documents = "corpus" }
vocab_size = 8192
[stages.tokens]
kind = "tokenize"
inputs = { documents = "corpus", tokenizer = "tokenizer" }
EOF

echo "== corpus"
"$ausa" build "$dag:corpus" --store "$store" -q
text_bytes=$(show_field "$dag:corpus" stats.bytes)
echo "corpus: $(show_field "$dag:corpus" stats.documents) documents, $text_bytes bytes of text" \
  "(train $(show_field "$dag:corpus" stats.splits.train.bytes))"

echo "== tokenizer training (vocab 8192)"
train=$("$py" "$peer" measure "$ausa" build "$dag:tokenizer" --store "$store" -q --force)
train_stage=$(show_field "$dag:tokenizer" built.seconds)
echo "merges $(show_field "$dag:tokenizer" stats.merges), vocab $(show_field "$dag:tokenizer" stats.vocab_size)," \
  "distinct pieces $(show_field "$dag:tokenizer" stats.distinct_pieces)"

echo "== tokenize"
encode=$("$py" "$peer" measure "$ausa" build "$dag:tokens" --store "$store" -q --force)
encode_stage=$(show_field "$dag:tokens" built.seconds)
echo "tokens $(show_field "$dag:tokens" stats.tokens), tokens/word $(show_field "$dag:tokens" stats.tokens_per_word)," \
  "encoder: $(show_field "$dag:tokens" stats.encoder)"

echo "== Python tokenizers encode_batch on the same text and tokenizer.json"
corpus_dir=$("$ausa" path "$dag:corpus" --store "$store")
tokenizer_dir=$("$ausa" path "$dag:tokenizer" --store "$store")
tokens_dir=$("$ausa" path "$dag:tokens" --store "$store")
python=$("$py" "$peer" peer "$corpus_dir/documents.parquet" "$tokenizer_dir/tokenizer.json" "$tokens_dir")

echo "== results ($(nproc) cores)"
"$py" - "$text_bytes" "$train" "$train_stage" "$encode" "$encode_stage" "$python" <<'EOF'
import json, sys
text, train, train_stage, encode, encode_stage, python = sys.argv[1:]
text, train, encode, python = int(text), json.loads(train), json.loads(encode), json.loads(python)
ours = text / 1e6 / float(encode_stage)
ours_e2e = text / 1e6 / encode["seconds"]
print(f"tokenizer training: {train['seconds']:.2f} s wall ({float(train_stage):.2f} s in the stage), "
      f"peak RSS {train['max_rss_bytes'] / 2**20:.0f} MiB")
print(f"tokenize: {ours:.1f} MB/s in the stage ({float(encode_stage):.2f} s), "
      f"{ours_e2e:.1f} MB/s whole build ({encode['seconds']:.2f} s), peak RSS {encode['max_rss_bytes'] / 2**20:.0f} MiB")
print(f"python tokenizers {python['tokenizers_version']} encode_batch: {python['mb_per_s']:.1f} MB/s "
      f"({python['encode_batch_seconds']:.2f} s); ids identical for {python['documents_checked']} documents")
print(f"ratio ours/python: {ours / python['mb_per_s']:.2f}x in the stage, "
      f"{ours_e2e / python['mb_per_s']:.2f}x whole build (target >= 1.5x)")
EOF
