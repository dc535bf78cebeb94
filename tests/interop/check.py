"""Interop check: our artifacts read by the reference Python libraries.

Usage: python tests/interop/check.py AUSA_BINARY STORE DAG

For every built stage of DAG it reads the artifacts with pyarrow (Parquet tables,
Arrow IPC token files) and checks them against the manifests' statistics; where the
DAG has a tokenizer, it loads tokenizer.json with the Python `tokenizers` package and
checks that it encodes sample documents to exactly the ids we stored; the set artifacts
are checked against a plain-Python reference of the method (sets_check.py).
"""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq


def ausa(binary, store, *args):
    out = subprocess.run([binary, "--store", store, *args, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def check_documents(dir_, stats):
    table = pq.read_table(os.path.join(dir_, "documents.parquet"))
    assert table.schema.names[:3] == ["doc_id", "split", "text"], table.schema
    assert table.num_rows == stats.get("documents", table.num_rows), (table.num_rows, stats)
    words = sum(len(t.split()) for t in table.column("text").to_pylist())
    if "words" in stats:
        assert words == stats["words"], (words, stats["words"])
    return table


def check_doc_stats(dir_, documents):
    table = pq.read_table(os.path.join(dir_, "doc_stats.parquet"))
    texts = documents.column("text").to_pylist()
    words = table.column("words").to_pylist()
    assert len(words) == len(texts)
    for text, n in zip(texts, words):
        assert len(text.split()) == n, (n, text[:80])


def main():
    binary, store, dag = sys.argv[1:4]
    status = ausa(binary, store, "status", dag)
    checked = []
    documents = {}
    for stage in status["stages"]:
        if stage["state"] != "up-to-date":
            continue
        show = ausa(binary, store, "show", f"{dag}:{stage['stage']}")
        dir_, stats, kind = show["object"], show["manifest"]["stats"], stage["kind"]
        inputs = {i["slot"]: i["stage"] for i in show["inputs"]}
        if kind in ("corpus", "subset", "download"):
            documents[stage["stage"]] = check_documents(dir_, stats)
        elif kind == "doc_stats":
            check_doc_stats(dir_, documents[inputs["documents"]])
        elif kind == "tokenize":
            import tokenize_check  # noqa: E402  (next to this file)

            tok_show = ausa(binary, store, "show", f"{dag}:{inputs['tokenizer']}")
            tok_dir, tok_stats = tok_show["object"], tok_show["manifest"]["stats"]
            if "python_encode" in tok_stats:
                # The call the tokenizer documents is the one this check makes.
                assert "tok.encode_special_tokens = True" in tok_stats["python_encode"], tok_stats
                assert "add_special_tokens=False" in tok_stats["python_encode"], tok_stats
            sample = None if os.environ.get("AUSA_INTEROP_ALL") else 25
            n, unk_ids, unk_strings = tokenize_check.check(
                dir_, tok_dir, documents[inputs["documents"]], sample)
            markers = tok_stats.get("unknown_markers") or []
            if "<unk>" in markers:
                assert unk_ids == unk_strings, (unk_ids, unk_strings)
            kind = f"tokenize; {n} documents match tokenizers' encode, {unk_ids} <unk> ids for {unk_strings} <unk> markers"
        elif kind == "routing":
            import sets_check  # noqa: E402  (next to this file)

            dirs = {s["kind"]: ausa(binary, store, "show", f"{dag}:{s['stage']}")["object"]
                    for s in status["stages"]}
            sets = sum(sets_check.check(dirs, split) for split in ("train", "validation", "test")
                       if os.path.exists(os.path.join(dirs["banks"], f"banks-{split}.arrow")))
            assert sets > 0, "no set checked"
            kind = f"sequences, banks, minhash, routing; {sets} signatures recomputed"
        else:
            continue
        checked.append(f"{stage['stage']} ({kind})")
    assert checked, f"no built stages of {dag} in {store}"
    print("interop ok:", ", ".join(checked))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
