"""Checks a `tokenize` artifact against the Python `tokenizers` package and pyarrow."""
import os

import pyarrow.ipc as ipc
from tokenizers import Tokenizer


def check(tokens_dir, tokenizer_dir, documents, sample=25):
    tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    eos = tok.token_to_id("</s>")
    assert eos is not None, "tokenizer.json lacks </s>"
    doc_ids = documents.column("doc_id").to_pylist()
    splits = documents.column("split").to_pylist()
    texts = documents.column("text").to_pylist()
    checked = 0
    for split in ("train", "validation", "test"):
        path = os.path.join(tokens_dir, f"tokens-{split}.arrow")
        rows = [i for i, s in enumerate(splits) if s == split]
        if not rows:
            assert not os.path.exists(path), f"{path} exists for an empty split"
            continue
        table = ipc.open_file(path).read_all()
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        assert meta.get("ausa.format") == "tokens/1", meta
        vocab = int(meta["ausa.vocab_size"])
        assert vocab == tok.get_vocab_size(), (vocab, tok.get_vocab_size())
        assert table.column("doc_id").to_pylist() == [doc_ids[i] for i in rows]
        stored = table.column("tokens")
        step = max(1, len(rows) // sample)
        for j in range(0, len(rows), step):
            text = texts[rows[j]]
            want = tok.encode(text, add_special_tokens=False).ids + [eos]
            got = stored[j].as_py()
            assert got == want, f"{split} doc {doc_ids[rows[j]]}: ours {got[:12]}... python {want[:12]}..."
            checked += 1
    assert checked > 0
