"""Checks a `tokenize` artifact against the Python `tokenizers` package and pyarrow.

The call that reproduces our ids is exactly the one documented in docs/formats.md and
in `ausa show <dag>:tokenizer` (`encode` below): special tokens in text stay plain
text, unknown-word markers (non-special added tokens such as `<unk>`) are matched.
"""
import os

import pyarrow.ipc as ipc
from tokenizers import Tokenizer


def load(tokenizer_dir):
    """The tokenizer as our ids need it."""
    tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    tok.encode_special_tokens = True
    return tok


def encode(tok, text):
    """Our ids for one document: no special tokens added, then `</s>`."""
    return tok.encode(text, add_special_tokens=False).ids + [tok.token_to_id("</s>")]


def check(tokens_dir, tokenizer_dir, documents, sample=25):
    """Compares `sample` documents per split (every one when sample is None); returns
    (documents checked, `<unk>` ids stored, `<unk>` strings in those documents)."""
    tok = load(tokenizer_dir)
    eos = tok.token_to_id("</s>")
    unk = tok.token_to_id("<unk>")
    assert eos is not None, "tokenizer.json lacks </s>"
    doc_ids = documents.column("doc_id").to_pylist()
    splits = documents.column("split").to_pylist()
    texts = documents.column("text").to_pylist()
    checked = unk_ids = unk_strings = 0
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
        step = 1 if sample is None else max(1, len(rows) // sample)
        for j in range(0, len(rows), step):
            text = texts[rows[j]]
            want = encode(tok, text)
            got = stored[j].as_py()
            assert got == want, f"{split} doc {doc_ids[rows[j]]}: ours {got[:12]}... python {want[:12]}..."
            checked += 1
            unk_ids += got.count(unk)
            unk_strings += text.count("<unk>")
    assert checked > 0
    return checked, unk_ids, unk_strings
