// The token -> set router of set-kernel attention, fused: for token t of sequence b and
// head h, gates = softmax_j(q_t . z_j) over the sets j that t may use (route[b, t, j]),
// optionally only the TOPK best (renormalized), and out_t = sum_j gates_j z_j. A token
// with no visible set gets a zero output and lse = -inf. The reference is the router
// half of `SetAttention::forward` (kernels/src/lib.rs); tests in kernels/src/tests_cuda.rs.
//
// Layout (fp32, row-major): q [B, H, L, D], z [B, H, M, D], route [B, L, M] u8,
// out [B, H, L, D], lse [B, H, L]. D = HEAD_DIM is fixed at compile time (NVRTC option
// -DHEAD_DIM=..), so a thread's query and accumulator live in registers.
//
// Grid: x over blocks of ROWS tokens, y over B * H. One thread per token; the block
// stages TJ sets' z rows in shared memory and every thread reads them as broadcasts.
// Without top-k the softmax is online (one pass, running max and sum, as FlashAttention);
// with top-k a first pass keeps the TOPK best logits in registers, a second mixes them.

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<head dimension>"
#endif
#define ROWS 128
#define TJ 32
#define TOPK_MAX 8
// NVRTC has no math.h: -inf by its bits.
#define NEG_INF __int_as_float(0xff800000)

// Whether any token of the block may use a set of the tile j0 .. j0 + width: a tile no
// token sees (under the causal rule, every set ending after the block's last token) is
// skipped whole, which halves the work of a causal route. Uniform across the block.
__device__ __forceinline__ bool tile_used(const unsigned char* rrow, bool live, int j0,
                                          int width) {
    bool mine = false;
    if (live)
        for (int r = 0; r < width; ++r) mine |= rrow[j0 + r] != 0;
    return __syncthreads_or(mine);
}

extern "C" __global__ void __launch_bounds__(ROWS)
router_fwd(const float* __restrict__ q, const float* __restrict__ z,
           const unsigned char* __restrict__ route, float* __restrict__ out,
           float* __restrict__ lse, int* __restrict__ kept, int heads, int len, int m,
           int topk) {
    __shared__ float zs[TJ][HEAD_DIM];
    const int bh = blockIdx.y;
    const int b = bh / heads;
    const int t = blockIdx.x * ROWS + threadIdx.x;
    const bool live = t < len;
    const float* zb = z + (size_t)bh * m * HEAD_DIM;
    const unsigned char* rrow = route + ((size_t)b * len + (live ? t : 0)) * m;

    float qr[HEAD_DIM];
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d)
        qr[d] = live ? q[((size_t)bh * len + t) * HEAD_DIM + d] : 0.0f;

    float acc[HEAD_DIM];
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) acc[d] = 0.0f;
    float run_max = NEG_INF, run_sum = 0.0f;
    float best[TOPK_MAX];
    int best_j[TOPK_MAX];
#pragma unroll
    for (int s = 0; s < TOPK_MAX; ++s) { best[s] = NEG_INF; best_j[s] = -1; }

    for (int j0 = 0; j0 < m; j0 += TJ) {
        const int width = min(TJ, m - j0);
        if (!tile_used(rrow, live, j0, width)) continue;
        for (int e = threadIdx.x; e < TJ * HEAD_DIM; e += ROWS) {
            const int r = e / HEAD_DIM, d = e % HEAD_DIM;
            zs[r][d] = r < width ? zb[(size_t)(j0 + r) * HEAD_DIM + d] : 0.0f;
        }
        __syncthreads();
        if (live) {
            for (int r = 0; r < width; ++r) {
                if (!rrow[j0 + r]) continue;
                float logit = 0.0f;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) logit += qr[d] * zs[r][d];
                if (topk > 0) {
                    // Insertion into the descending top-k list; a tie keeps the earlier set.
                    float v = logit;
                    int vj = j0 + r;
#pragma unroll
                    for (int u = 0; u < TOPK_MAX; ++u) {
                        if (u < topk && v > best[u]) {
                            const float tv = best[u];
                            const int tj = best_j[u];
                            best[u] = v;
                            best_j[u] = vj;
                            v = tv;
                            vj = tj;
                        }
                    }
                } else {
                    const float new_max = fmaxf(run_max, logit);
                    const float scale = expf(run_max - new_max);
                    const float w = expf(logit - new_max);
                    run_sum = run_sum * scale + w;
#pragma unroll
                    for (int d = 0; d < HEAD_DIM; ++d) acc[d] = acc[d] * scale + w * zs[r][d];
                    run_max = new_max;
                }
            }
        }
        __syncthreads();
    }
    if (!live) return;
    if (topk > 0) {
        // The kept sets, for the backward pass (-1 past the visible ones).
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s)
            kept[((size_t)bh * len + t) * TOPK_MAX + s] = s < topk ? best_j[s] : -1;
        run_max = best[0];
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            if (s < topk && best_j[s] >= 0) {
                const float w = expf(best[s] - run_max);
                run_sum += w;
                const float* zr = zb + (size_t)best_j[s] * HEAD_DIM;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) acc[d] += w * zr[d];
            }
        }
    }
    const size_t row = (size_t)bh * len + t;
    const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) out[row * HEAD_DIM + d] = acc[d] * inv;
    lse[row] = run_sum > 0.0f ? run_max + logf(run_sum) : NEG_INF;
}

// ---- Backward -----------------------------------------------------------------------
// With P_tj = exp(q_t . z_j - lse_t) over the kept sets of token t and
// D_t = dout_t . out_t:  dS_tj = P_tj (dout_t . z_j - D_t),
//   dq_t = sum_j dS_tj z_j                       (router_bwd_dq: one thread per token)
//   dz_j = sum_t dS_tj q_t + P_tj dout_t         (router_bwd_dz: one block per set tile)
// Each output is a sum in a fixed order by one thread: no atomics, so the gradients are
// the same bits on every run. Kept = route[b, t, j] and, with top-k, j among kept[t].

// Whether set j is kept for the token whose top-k list is `list` (topk 0: all visible).
__device__ __forceinline__ bool in_top(const int* list, int topk, int j) {
    bool found = false;
#pragma unroll
    for (int s = 0; s < TOPK_MAX; ++s) found |= (s < topk && list[s] == j);
    return found;
}

extern "C" __global__ void __launch_bounds__(ROWS)
router_bwd_dq(const float* __restrict__ q, const float* __restrict__ z,
              const unsigned char* __restrict__ route, const float* __restrict__ out,
              const float* __restrict__ lse, const int* __restrict__ kept,
              const float* __restrict__ dout, float* __restrict__ dq,
              float* __restrict__ dsum, float* __restrict__ kept_p,
              float* __restrict__ kept_ds, int heads, int len, int m, int topk) {
    __shared__ float zs[TJ][HEAD_DIM];
    const int bh = blockIdx.y;
    const int b = bh / heads;
    const int t = blockIdx.x * ROWS + threadIdx.x;
    const bool live = t < len;
    const size_t row = (size_t)bh * len + (live ? t : 0);
    const float* zb = z + (size_t)bh * m * HEAD_DIM;
    const unsigned char* rrow = route + ((size_t)b * len + (live ? t : 0)) * m;
    const float row_lse = live ? lse[row] : NEG_INF;
    float qr[HEAD_DIM], gr[HEAD_DIM], acc[HEAD_DIM];
    float d_t = 0.0f;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) {
        qr[d] = live ? q[row * HEAD_DIM + d] : 0.0f;
        gr[d] = live ? dout[row * HEAD_DIM + d] : 0.0f;
        d_t += gr[d] * (live ? out[row * HEAD_DIM + d] : 0.0f);
        acc[d] = 0.0f;
    }
    int list[TOPK_MAX];
#pragma unroll
    for (int s = 0; s < TOPK_MAX; ++s)
        list[s] = (live && topk > 0) ? kept[row * TOPK_MAX + s] : -1;
    const bool empty = !(row_lse > NEG_INF);
    if (topk > 0) {
        // Only the kept sets: O(topk D) per token, the z rows read through the cache.
        // P and dS of each kept slot go to kept_p / kept_ds for router_bwd_dz_sparse.
        if (!live) return;
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            float p = 0.0f, ds = 0.0f;
            if (s < topk && list[s] >= 0 && !empty) {
                const float* zr = zb + (size_t)list[s] * HEAD_DIM;
                float logit = 0.0f, dp = 0.0f;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) {
                    logit += qr[d] * zr[d];
                    dp += gr[d] * zr[d];
                }
                p = expf(logit - row_lse);
                ds = p * (dp - d_t);
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) acc[d] += ds * zr[d];
            }
            kept_p[row * TOPK_MAX + s] = p;
            kept_ds[row * TOPK_MAX + s] = ds;
        }
#pragma unroll
        for (int d = 0; d < HEAD_DIM; ++d) dq[row * HEAD_DIM + d] = acc[d];
        dsum[row] = d_t;
        return;
    }
    for (int j0 = 0; j0 < m; j0 += TJ) {
        const int width = min(TJ, m - j0);
        if (!tile_used(rrow, live && !empty, j0, width)) continue;
        for (int e = threadIdx.x; e < TJ * HEAD_DIM; e += ROWS) {
            const int r = e / HEAD_DIM, d = e % HEAD_DIM;
            zs[r][d] = r < width ? zb[(size_t)(j0 + r) * HEAD_DIM + d] : 0.0f;
        }
        __syncthreads();
        if (live && !empty) {
            for (int r = 0; r < width; ++r) {
                const int j = j0 + r;
                if (!rrow[j]) continue;
                float logit = 0.0f, dp = 0.0f;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) {
                    logit += qr[d] * zs[r][d];
                    dp += gr[d] * zs[r][d];
                }
                const float ds = expf(logit - row_lse) * (dp - d_t);
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) acc[d] += ds * zs[r][d];
            }
        }
        __syncthreads();
    }
    if (!live) return;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) dq[row * HEAD_DIM + d] = acc[d];
    dsum[row] = d_t;
}

// Set tiles of SJ sets, token tiles of ST tokens; 256 threads.
#define SJ 16
#define ST (HEAD_DIM > 64 ? 16 : 32)
#define DZ_THREADS 256

extern "C" __global__ void __launch_bounds__(DZ_THREADS)
router_bwd_dz(const float* __restrict__ q, const float* __restrict__ z,
              const unsigned char* __restrict__ route, const float* __restrict__ lse,
              const int* __restrict__ kept, const float* __restrict__ dout,
              const float* __restrict__ dsum, float* __restrict__ dz, int heads, int len,
              int m, int topk) {
    __shared__ float zs[SJ][HEAD_DIM + 1];  // padded: a warp reads 16 rows at once
    __shared__ float qs[ST][HEAD_DIM];
    __shared__ float gs[ST][HEAD_DIM];
    __shared__ float ps[ST][SJ];
    __shared__ float dss[ST][SJ];
    const int bh = blockIdx.y;
    const int b = bh / heads;
    const int j0 = blockIdx.x * SJ;
    const int tid = threadIdx.x;
    const float* zb = z + (size_t)bh * m * HEAD_DIM;
    for (int e = tid; e < SJ * HEAD_DIM; e += DZ_THREADS) {
        const int r = e / HEAD_DIM, d = e % HEAD_DIM;
        zs[r][d] = j0 + r < m ? zb[(size_t)(j0 + r) * HEAD_DIM + d] : 0.0f;
    }
    // Outputs (set, dim) owned by this thread: o = tid + DZ_THREADS * u.
    constexpr int OWN = (SJ * HEAD_DIM + DZ_THREADS - 1) / DZ_THREADS;
    float acc[OWN];
#pragma unroll
    for (int u = 0; u < OWN; ++u) acc[u] = 0.0f;
    for (int t0 = 0; t0 < len; t0 += ST) {
        const int width = min(ST, len - t0);
        __syncthreads();  // the previous tile's reads are done
        for (int e = tid; e < ST * HEAD_DIM; e += DZ_THREADS) {
            const int r = e / HEAD_DIM, d = e % HEAD_DIM;
            const size_t row = (size_t)bh * len + t0 + r;
            qs[r][d] = r < width ? q[row * HEAD_DIM + d] : 0.0f;
            gs[r][d] = r < width ? dout[row * HEAD_DIM + d] : 0.0f;
        }
        __syncthreads();
        for (int pair = tid; pair < ST * SJ; pair += DZ_THREADS) {
            const int r = pair / SJ, c = pair % SJ;
            const int t = t0 + r, j = j0 + c;
            float p = 0.0f, ds = 0.0f;
            if (r < width && j < m && route[((size_t)b * len + t) * m + j]) {
                const size_t row = (size_t)bh * len + t;
                const bool keep = topk == 0 || in_top(kept + row * TOPK_MAX, topk, j);
                const float row_lse = lse[row];
                if (keep && row_lse > NEG_INF) {
                    float logit = 0.0f, dp = 0.0f;
#pragma unroll
                    for (int d = 0; d < HEAD_DIM; ++d) {
                        logit += qs[r][d] * zs[c][d];
                        dp += gs[r][d] * zs[c][d];
                    }
                    p = expf(logit - row_lse);
                    ds = p * (dp - dsum[row]);
                }
            }
            ps[r][c] = p;
            dss[r][c] = ds;
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < OWN; ++u) {
            const int o = tid + DZ_THREADS * u;
            if (o < SJ * HEAD_DIM) {
                const int c = o / HEAD_DIM, d = o % HEAD_DIM;
                float a = acc[u];
                for (int r = 0; r < width; ++r) a += dss[r][c] * qs[r][d] + ps[r][c] * gs[r][d];
                acc[u] = a;
            }
        }
    }
#pragma unroll
    for (int u = 0; u < OWN; ++u) {
        const int o = tid + DZ_THREADS * u;
        if (o < SJ * HEAD_DIM) {
            const int c = o / HEAD_DIM, d = o % HEAD_DIM;
            if (j0 + c < m) dz[((size_t)bh * m + j0 + c) * HEAD_DIM + d] = acc[u];
        }
    }
}

// With top-k: dz_j = sum over the (token, slot) entries that kept set j of
// kept_ds * q_t + kept_p * dout_t, O(topk) per token instead of a pass over every token
// per set. `order` lists the B*H*L*TOPK_MAX entries sorted by (bh, j) (a stable sort, so
// by token within a set), `seg[bh * m + j]` .. `seg[bh * m + j + 1]` is set j's run.
// One block per (set, bh), one thread per dimension: a fixed order, no atomics.
extern "C" __global__ void __launch_bounds__(HEAD_DIM)
router_bwd_dz_sparse(const float* __restrict__ q, const float* __restrict__ dout,
                     const float* __restrict__ kept_p, const float* __restrict__ kept_ds,
                     const long long* __restrict__ order, const long long* __restrict__ seg,
                     float* __restrict__ dz, int m) {
    const int j = blockIdx.x, bh = blockIdx.y, d = threadIdx.x;
    const size_t key = (size_t)bh * m + j;
    float acc = 0.0f;
    for (long long e = seg[key]; e < seg[key + 1]; ++e) {
        const long long entry = order[e];
        const long long row = entry / TOPK_MAX;
        acc += kept_ds[entry] * q[row * HEAD_DIM + d] + kept_p[entry] * dout[row * HEAD_DIM + d];
    }
    dz[key * HEAD_DIM + d] = acc;
}
