#!/usr/bin/env python3
"""Attention peers for `ausa bench ska`, measured in the same run on the same GPU.

What a researcher would use instead of set-kernel attention, at the issue's shapes
(bf16, causal, B*L tokens, H heads, D head width; forward and forward + backward,
median of --iters after --warmup):

- sdpa_flash: torch.nn.functional.scaled_dot_product_attention, causal, flash backend;
- flex_sw256: FlexAttention (torch.compile) with a causal sliding window of 256 tokens;
- sdpa_layer: a whole causal self-attention layer around sdpa_flash, from token states
  x [B, L, H*D] to the output projection (fused QKV projection, SDPA, output
  projection; gradients of x and both weight matrices). The two peers above, like the
  issue's anchor table, time the attention op alone from q, k, v, while `ausa bench ska`
  times a whole SKA layer (pooling, value, gate and output projections included): this
  row is the like-for-like comparison;

With --cuda-graph each pass is also captured once in a CUDA graph (torch.cuda.graph, after
the warm-up on a side stream) and its replays are timed, as `ausa bench ska --cuda-graph`
times SKA: the GPU's time without Python's and the autograd engine's host work. Graph
steps keep their gradients and accumulate into them (a captured step cannot drop them),
as SKA's do. Graph rows have cuda_graph 1.

and the machine's ceilings for the achieved-rate columns: a large bf16 GEMM (TFLOP/s)
and a device-to-device copy (GB/s). Writes one CSV (--csv) with rows
`peer,dtype,B,L,H,D,fwd_ms,elapsed_ms,max_vram_mb,rate,cuda_graph` where rate is TFLOP/s for
attention and GEMM rows (causal: half the QK^T and PV FLOPs), GB/s for the copy.

Usage: python3 tests/bench/attn_peers.py --lens 512,1024,2048 --csv peers.csv
"""

import argparse
import csv
import gc
import statistics
import sys

import torch
import torch.nn.functional as F


def timed(fn, warmup, iters):
    """Median milliseconds of fn() with CUDA events, after warmup calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


SIDE = []


def graphed(fn, warmup):
    """fn captured in a CUDA graph after warmup eager calls on a side stream: the replay.
    One side stream for every row: torch keeps a cuBLAS workspace per stream for the rest
    of the process, which a new stream per row would add to every later row's peak."""
    if not SIDE:
        SIDE.append(torch.cuda.Stream())
    side = SIDE[0]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def release():
    """Frees what earlier rows left (graphs and their pools sit in reference cycles until
    a collection), so each row's peak is its own."""
    gc.collect()
    torch.cuda.empty_cache()


def timed_pair(forward, step, keep_step, warmup, iters, cuda_graph):
    """(fwd ms, fwd+bwd ms), eager, or as graph replays (keep_step keeps the gradients)."""
    if not cuda_graph:
        return timed(forward, warmup, iters), timed(step, warmup, iters)
    return (timed(graphed(forward, warmup), warmup, iters),
            timed(graphed(keep_step, warmup), warmup, iters))


def attention_rows(name, attend, b, l, h, d, warmup, iters, window=None, cuda_graph=False):
    release()
    q, k, v = (
        torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    grad = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16)

    def forward():
        with torch.no_grad():
            attend(q, k, v)

    def keep_step():
        attend(q, k, v).backward(grad)

    def step():
        keep_step()
        q.grad = k.grad = v.grad = None

    torch.cuda.reset_peak_memory_stats()
    fwd, both = timed_pair(forward, step, keep_step, warmup, iters, cuda_graph)
    vram = torch.cuda.max_memory_allocated() / 2**20
    # Causal: half of the 2 * 2 * B H L^2 D forward FLOPs (a sliding window: about
    # L * window pairs instead of L^2 / 2); backward 2.5x the forward.
    pairs = 0.5 * l * l if window is None else l * min(window, l)
    flops = 4 * b * h * pairs * d * 3.5
    return [name, "bf16", b, l, h, d, f"{fwd:.4f}", f"{both:.4f}", f"{vram:.1f}",
            f"{flops / (both * 1e-3) / 1e12:.1f}", int(cuda_graph)]


def layer_rows(b, l, h, d, warmup, iters, cuda_graph=False):
    """sdpa_layer: x -> QKV -> causal flash SDPA -> output projection, bf16."""
    release()
    width = h * d
    x = torch.randn(b, l, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w_qkv = (torch.randn(3 * width, width, device="cuda") / width**0.5).bfloat16().requires_grad_()
    w_out = (torch.randn(width, width, device="cuda") / width**0.5).bfloat16().requires_grad_()
    grad = torch.randn(b, l, width, device="cuda", dtype=torch.bfloat16)

    def attend():
        q, k, v = (x @ w_qkv.t()).view(b, l, 3, h, d).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return o.transpose(1, 2).reshape(b, l, width) @ w_out.t()

    def forward():
        with torch.no_grad():
            attend()

    def keep_step():
        attend().backward(grad)

    def step():
        keep_step()
        x.grad = w_qkv.grad = w_out.grad = None

    torch.cuda.reset_peak_memory_stats()
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        fwd, both = timed_pair(forward, step, keep_step, warmup, iters, cuda_graph)
    vram = torch.cuda.max_memory_allocated() / 2**20
    # Attention as in attention_rows plus the projections: 2 * B L * width * 4 width
    # forward FLOPs, backward twice that.
    flops = 4 * b * h * 0.5 * l * l * d * 3.5 + 3 * 2 * b * l * width * 4 * width
    return ["sdpa_layer", "bf16", b, l, h, d, f"{fwd:.4f}", f"{both:.4f}", f"{vram:.1f}",
            f"{flops / (both * 1e-3) / 1e12:.1f}", int(cuda_graph)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lens", default="512,1024,2048,4096,8192,16384")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--window", type=int, default=256, help="FlexAttention sliding window")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (no compile)")
    p.add_argument("--no-layer", action="store_true", help="skip the whole-layer SDPA peer")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time every peer as CUDA graph replays (rows with cuda_graph 1)")
    p.add_argument("--csv", required=True)
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attn_peers.py: no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    flex = None
    if not a.no_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex_compiled = torch.compile(flex_attention)
    # Eager rows for every L first, then the graph rows: a graph row's pool never sits
    # under an eager row's peak.
    for g in [False, True] if a.cuda_graph else [False]:
        for l in [int(x) for x in a.lens.split(",")]:
            b = max(1, a.tokens // l)
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                rows.append(attention_rows("sdpa_flash", sdpa, b, l, a.heads, a.head_dim,
                                           a.warmup, a.iters, cuda_graph=g))
            if not a.no_flex:
                w = a.window
                mask = create_block_mask(lambda b_, h_, qi, ki: (qi >= ki) & (qi - ki < w),
                                         None, None, l, l, device="cuda")
                flex = lambda q, k, v, m=mask: flex_compiled(q, k, v, block_mask=m)
                try:
                    rows.append(attention_rows(f"flex_sw{w}", flex, b, l, a.heads, a.head_dim,
                                               a.warmup, a.iters, window=w, cuda_graph=g))
                except Exception as e:  # a compiled kernel that does not capture: say so
                    if not g:
                        raise
                    print(f"flex_sw{w} L {l}: no CUDA graph row ({type(e).__name__}: {e})",
                          file=sys.stderr, flush=True)
            if not a.no_layer:
                rows.append(layer_rows(b, l, a.heads, a.head_dim, a.warmup, a.iters,
                                       cuda_graph=g))
            print(rows[-1], flush=True)
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    gemm = timed(lambda: x @ y, a.warmup, a.iters)
    rows.append(["gemm_bf16", "bf16", 1, n, 1, n, f"{gemm:.4f}", f"{gemm:.4f}", "",
                 f"{2 * n**3 / (gemm * 1e-3) / 1e12:.1f}", 0])
    src = torch.empty(2**30, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    copy = timed(lambda: dst.copy_(src), a.warmup, a.iters)
    rows.append(["d2d_copy", "u8", 1, 2**30, 1, 1, f"{copy:.4f}", f"{copy:.4f}", "",
                 f"{2 * 2**30 / (copy * 1e-3) / 1e9:.1f}", 0])
    with open(a.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["peer", "dtype", "B", "L", "H", "D", "fwd_ms", "elapsed_ms", "max_vram_mb",
                    "rate", "cuda_graph"])
        w.writerows(rows)
    for r in rows:
        print(",".join(str(c) for c in r))


if __name__ == "__main__":
    main()
