#!/usr/bin/env python3
"""Python side of tests/bench/tokenize.sh.

measure CMD...   runs CMD and prints {"seconds", "max_rss_bytes"} of the child as JSON
                 (peak RSS from getrusage, so no /usr/bin/time is needed).
peer DOCS TOKENIZER TOKENS_DIR
                 encodes the documents of DOCS (documents.parquet) with the Python
                 `tokenizers` package's encode_batch on TOKENIZER (tokenizer.json), in the
                 same mode as ausa's `tokenize` stage (no added special tokens,
                 special-token strings treated as text), prints the throughput as JSON,
                 and checks that every document's ids, followed by </s>, equal the ids
                 in TOKENS_DIR/tokens-<split>.arrow (read with pyarrow).
"""

import json
import resource
import subprocess
import sys
import time

BATCH_DOCS = 4096
SPLITS = ("train", "validation", "test")


def measure(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": seconds, "max_rss_bytes": peak_kb * 1024}))


def texts_by_split(documents):
    import pyarrow.parquet as pq

    table = pq.read_table(documents, columns=["split", "text"])
    by_split = {s: [] for s in SPLITS}
    for split, text in zip(table.column("split").to_pylist(), table.column("text").to_pylist()):
        by_split[split].append(text)
    return by_split


def encode_all(tokenizer, by_split):
    """Ids per split (lists of Encoding.ids) and the encode_batch time alone."""
    encoded, seconds = {}, 0.0
    for split, texts in by_split.items():
        ids = []
        for start in range(0, len(texts), BATCH_DOCS):
            chunk = texts[start : start + BATCH_DOCS]
            began = time.perf_counter()
            encodings = tokenizer.encode_batch(chunk, add_special_tokens=False)
            seconds += time.perf_counter() - began
            ids.extend(e.ids for e in encodings)
        encoded[split] = ids
    return encoded, seconds


def check_against_ours(encoded, tokens_dir, eos):
    """Compares with ausa's files; returns the number of documents checked."""
    import pyarrow.ipc as ipc

    checked = 0
    for split, docs in encoded.items():
        if not docs:
            continue
        with ipc.open_file(f"{tokens_dir}/tokens-{split}.arrow") as reader:
            column = reader.read_all().column("tokens").combine_chunks()
        if len(column) != len(docs):
            sys.exit(f"{split}: ausa has {len(column)} documents, Python {len(docs)}")
        values, offsets = column.values, column.offsets
        for start in range(0, len(docs), BATCH_DOCS):
            end = min(start + BATCH_DOCS, len(docs))
            ours = values[offsets[start].as_py() : offsets[end].as_py()].to_pylist()
            theirs = [i for ids in docs[start:end] for i in ids + [eos]]
            if ours != theirs:
                sys.exit(f"{split}: ids differ in documents {start}..{end}")
        checked += len(docs)
    return checked


def peer(documents, tokenizer_json, tokens_dir):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_json)
    tokenizer.encode_special_tokens = True
    by_split = texts_by_split(documents)
    text_bytes = sum(len(t.encode("utf-8")) for texts in by_split.values() for t in texts)
    encoded, seconds = encode_all(tokenizer, by_split)
    checked = check_against_ours(encoded, tokens_dir, tokenizer.token_to_id("</s>"))
    print(
        json.dumps(
            {
                "tokenizers_version": tokenizers.__version__,
                "text_bytes": text_bytes,
                "encode_batch_seconds": seconds,
                "mb_per_s": text_bytes / 1e6 / seconds,
                "documents_checked": checked,
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "measure":
        measure(sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "peer":
        peer(*sys.argv[2:])
    else:
        sys.exit(__doc__)
