"""Checks the set artifacts (sequences, banks, minhash, routing) with pyarrow against a
plain-Python reference of the method: sequences are slices of the token stream, each set is
the sorted distinct ids of its span, signatures are per-function minima of the SplitMix64
hash family, routing lists exactly the sets a token may see."""
import os

import pyarrow.ipc as ipc

MASK = (1 << 64) - 1


def mix(seed, i, u):
    """h_i(u) of the minhash stage: SplitMix64's finalizer, top 32 bits."""
    z = (seed + i * 0x9E3779B97F4A7C15 + u * 0xD1B54A32D192ED03) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return (z ^ (z >> 31)) >> 32


# Known values, also pinned by the Rust test `the_minhash_family_matches_known_vectors`.
VECTORS = [((0, 0, 1), 2181674112), ((0, 1, 0), 3793791033), ((7, 3, 12345), 390360134),
           ((1 << 63, 255, (1 << 32) - 1), 1301945997), ((123456789, 127, 65535), 2112175662)]
for (s_, i_, u_), want_ in VECTORS:
    assert mix(s_, i_, u_) == want_, (s_, i_, u_, mix(s_, i_, u_), want_)


def read(path):
    table = ipc.open_file(path).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table, meta


def check(dirs, split, sample=40):
    """dirs: stage kind -> object dir. Returns the number of sets checked."""
    tokens, _ = read(os.path.join(dirs["tokenize"], f"tokens-{split}.arrow"))
    stream = [t for doc in tokens.column("tokens").to_pylist() for t in doc]
    seqs, meta = read(os.path.join(dirs["sequences"], f"sequences-{split}.arrow"))
    assert meta["ausa.format"] == "tokens/1", meta
    starts = seqs.column("doc_id").to_pylist()
    rows = seqs.column("tokens").to_pylist()
    for start, row in zip(starts, rows):
        assert row == stream[start:start + len(row)], f"sequence at {start} is not a slice of the stream"

    banks, meta = read(os.path.join(dirs["banks"], f"banks-{split}.arrow"))
    assert meta["ausa.format"] == "banks/1", meta
    sets = banks.column("sets").to_pylist()
    spans = banks.column("spans").to_pylist()
    assert len(sets) == len(rows)
    flat = []
    for row, row_sets, row_spans in zip(rows, sets, spans):
        covered = set()
        for atoms, (start, end) in zip(row_sets, row_spans):
            assert atoms == sorted(set(row[start:end])), (start, end)
            covered.update(range(start, end))
            flat.append(atoms)
        assert covered == set(range(len(row))), "every token lies in some set"

    sigs, meta = read(os.path.join(dirs["minhash"], f"minhash-{split}.arrow"))
    assert meta["ausa.format"] == "minhash/1", meta
    k, seed = int(meta["ausa.minhash_k"]), int(meta["ausa.seed"])
    signatures = sigs.column("signature")
    sizes = sigs.column("size").to_pylist()
    assert len(sizes) == len(flat) and sizes == [len(a) for a in flat]
    step = max(1, len(flat) // sample)
    for j in range(0, len(flat), step):
        want = [min((mix(seed, i, a) for a in flat[j]), default=(1 << 32) - 1) for i in range(k)]
        assert signatures[j].as_py() == want, f"signature of set {j}"

    routing, meta = read(os.path.join(dirs["routing"], f"routing-{split}.arrow"))
    assert meta["ausa.format"] == "routing/2", meta
    causal, topk = meta["ausa.causal"] == "true", int(meta["ausa.router_topk"])
    layouts = dict(zip(map(tuple, routing.column("ends").to_pylist()),
                       routing.column("candidates").to_pylist()))
    for row_spans in spans:
        ends = tuple(end for _, end in row_spans)
        table = layouts[ends]
        for t, got in enumerate(table):
            visible = [j for j, e in enumerate(ends) if not causal or e <= t + 1]
            if causal and topk:
                visible = visible[-topk:]
            assert sorted(got) == visible, (t, got, visible)
    return len(flat) // step
