#!/usr/bin/env python3
"""Joins `ausa bench ska --csv` and `attn_peers.py --csv` of one run into a Markdown
table of forward + backward times and ratios (peer time / SKA time: above 1 means SKA
is faster), per sequence length, for one precision and gate top-k. SKA columns are named
by backend, gate top-k (`top8`), for a limited route (`--router-topk N`, the CSV's
`candidates`) `cN`, and `pt` for rows whose router forward was the per-token kernel
(the CSV's router_forward column, `AUSA_ROUTER_PER_TOKEN=1`): an A/B run's two sides
are then two columns.

Rows of one timing only: eager steps, or with --cuda-graph CUDA graph replays on both
sides (the CSVs' cuda_graph column; older CSVs have none: eager). Rows of one scope only:
the whole SKA layer, or with --core the layer without its gate and output projections
(`ausa bench ska --core`, the CSV's scope column; older CSVs have none: layer).

Usage: python3 tests/bench/ska_vs_peers.py SKA.csv PEERS.csv [--dtype bf16] [--topk 8]
       [--candidates 8] [--cuda-graph] [--core]
"""

import argparse
import csv


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ska")
    p.add_argument("peers")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--topk", default=None, help="router_topk rows to use (default: all)")
    p.add_argument("--candidates", default=None,
                   help="candidates rows to use (default: all; older CSVs have none: 0)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="compare CUDA graph replays (cuda_graph 1) instead of eager steps")
    p.add_argument("--core", action="store_true",
                   help="SKA rows of scope core (no gate or output projection) instead of layer")
    a = p.parse_args()
    mode = "1" if a.cuda_graph else "0"
    scope = "core" if a.core else "layer"
    ska = {}
    with open(a.ska) as f:
        for r in csv.DictReader(f):
            c = r.get("candidates") or "0"
            if (r.get("cuda_graph") or "0") != mode or (r.get("scope") or "layer") != scope:
                continue
            if r["dtype"] != a.dtype or (a.topk is not None and r["router_topk"] != a.topk):
                continue
            if a.candidates is not None and c != a.candidates:
                continue
            t = r["router_topk"] + ("" if c == "0" else f" c{c}")
            t += " pt" if r.get("router_forward") == "per-token" else ""
            ska[(r["backend"], t, int(r["L"]))] = r
    peers = {}
    with open(a.peers) as f:
        for r in csv.DictReader(f):
            if r["peer"] in ("gemm_bf16", "d2d_copy") or (r.get("cuda_graph") or "0") != mode:
                continue
            peers[(r["peer"], int(r["L"]))] = r
    lens = sorted({k[2] for k in ska})
    backends = sorted({(k[0], k[1]) for k in ska})
    names = sorted({k[0] for k in peers})
    head = ["L"] + [f"{b} top{t} ms" for b, t in backends] + [f"{n} ms" for n in names]
    ratios = [(n, b, t) for n in names for b, t in backends if b != "ska-naive"]
    head += [f"{n} / {b} top{t}" for n, b, t in ratios]
    both = [t for b, t in backends if b == "ska-cuda" and ("ska-naive", t) in backends]
    head += [f"naive / cuda top{t}" for t in both]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for l in lens:
        cells = [str(l)]
        for b, t in backends:
            r = ska.get((b, t, l))
            cells.append(f"{float(r['elapsed_ms']):.3f}" if r else "")
        for n in names:
            r = peers.get((n, l))
            cells.append(f"{float(r['elapsed_ms']):.3f}" if r else "")
        for n, b, t in ratios:
            r, q = ska.get((b, t, l)), peers.get((n, l))
            cells.append(f"{float(q['elapsed_ms']) / float(r['elapsed_ms']):.2f}x"
                         if r and q else "")
        for t in both:
            nv = ska.get(("ska-naive", t, l))
            cu = ska.get(("ska-cuda", t, l))
            cells.append(f"{float(nv['elapsed_ms']) / float(cu['elapsed_ms']):.2f}x"
                         if nv and cu else "")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
