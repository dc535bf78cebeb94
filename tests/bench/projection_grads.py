#!/usr/bin/env python3
"""The two projection costs kernels/src/linear.rs removes, timed on the GPU alone: each op
100 times inside one CUDA graph (eager timing of single small ops measures the host's
launch latency, not the GPU), median of 7 replays, microseconds per op.

- bias gradients: libtorch's column reduction dY.sum(0) against the one-row GEMM 1^T dY
  (what the linear op computes), bf16, at the projections' shapes;
- the value map's GEMMs with the inner dimension d + 1 = 1025 (odd: no tensor-core
  kernel) against 1032 (zero-padded, what SetAttention does) and 1024.

Usage: python3 tests/bench/projection_grads.py
"""

import statistics
import sys

import torch


def gpu_us(fn, reps=100, replays=7):
    """Microseconds per fn() from replays of a graph of `reps` calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(times)


def main():
    if not torch.cuda.is_available():
        sys.exit("projection_grads.py: no CUDA device")
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    print("rows,cols,sum0_us,ones_gemm_us,max_abs_diff")
    for n, d in [(16384, 1024), (16384, 768), (16384, 3072), (496, 1024)]:
        dy = torch.randn(n, d, **bf16)
        ones = torch.ones(1, n, **bf16)
        diff = ((ones @ dy).float().squeeze(0) - dy.sum(0).float()).abs().max().item()
        print(f"{n},{d},{gpu_us(lambda: dy.sum(0)):.1f},{gpu_us(lambda: ones @ dy):.1f},{diff:.3g}")
    print("inner_dim,fwd_us,dweight_us,dinput_us")
    for k in [1025, 1032, 1024]:
        x, w = torch.randn(496, k, **bf16), torch.randn(1024, k, **bf16)
        b, g = torch.randn(1024, **bf16), torch.randn(496, 1024, **bf16)
        fwd = gpu_us(lambda: torch.nn.functional.linear(x, w, b))
        print(f"{k},{fwd:.1f},{gpu_us(lambda: g.t() @ x):.1f},{gpu_us(lambda: g @ w):.1f}")


if __name__ == "__main__":
    main()
