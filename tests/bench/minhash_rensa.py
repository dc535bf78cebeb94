"""Signing throughput of rensa (PyPI) on the sets of an ausa bank file.

Usage: python minhash_rensa.py BANKS.arrow [K] [REPEATS]
Reads the bank's CSR with pyarrow (set offsets + atom ids, zero-copy) and signs every
set with rensa's fastest bulk entry point, RMinHash.digest_matrix_from_flat_token_hashes
(one flat u64 buffer + row offsets, atom ids passed as pre-hashed tokens, so rensa does
no string hashing). Prints one JSON line with the best of REPEATS runs.
"""
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import rensa


def main():
    path = sys.argv[1]
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    with pa.memory_map(path) as source:
        table = pa.ipc.open_file(source).read_all()
    sets = table.column("sets").combine_chunks().flatten()
    offsets = np.asarray(sets.offsets, dtype=np.uint64)
    atoms = np.asarray(sets.flatten(), dtype=np.uint64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(atoms, offsets, k, 0)
        best = min(best, time.perf_counter() - start)
    n = len(offsets) - 1
    print(json.dumps({
        "tool": f"rensa {getattr(rensa, '__version__', '')}".strip(),
        "sets": n, "atoms": int(len(atoms)), "k": k, "threads": os.cpu_count(),
        "seconds": round(best, 4), "sets_per_s": round(n / best),
        "shape": list(np.asarray(matrix).shape),
    }))


if __name__ == "__main__":
    main()
