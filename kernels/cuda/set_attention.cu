// Set x set attention of set-kernel attention, fused: for query set i of sequence b and
// head h, over the key sets j it may attend (attend[b, i, j]: both real sets of the
// sequence, end_j <= end_i),
//   s_ij = (exp(-gamma_h Delta_ij) + beta qa_i . kb_j) / tau_h,
//   out_i = sum_j softmax_j(s_ij) v_j,   lse_i = log sum_j exp(s_ij),
// a Flash-style online softmax that never stores the [M, M] scores. A row without an
// attendable set (a padding slot) gets zeros and lse = -inf. The reference is
// `SetAttention::set_outputs` (kernels/src/lib.rs); the backward's math is written out in
// tensor ops in kernels/src/set_attention.rs (`manual_backward`); tests in
// kernels/src/tests_cuda.rs.
//
// Layout (fp32, row-major): delta [B, M, M] (shared by every layer and head), attend
// [B, M, M] u8, gamma [H], tau [H], v / qa / kb / out [B, H, M, D], lse [B, H, M].
// D = HEAD_DIM and CONTENT (1: the beta term is on, qa and kb are read) are fixed at
// compile time (NVRTC -D options), so a thread's rows live in registers.
//
// Grid: x over blocks of ROWS rows, y over B * H. A group of SA_LANES lanes per row (a
// power of two, about HEAD_DIM / 8 dims per lane, chosen by the host: -DSA_LANES), lane l
// of the group holding dims l, l + SA_LANES, ...; dot products are summed over the group
// by shuffles. The block stages a tile of TJ other-side rows (and the Delta / attend
// tile, read along the contiguous dimension) through shared memory. One thread per row
// (SA_LANES 1) left the GPU nearly idle: the issue's shapes have ~8k rows in all
// (B * H * M with B * L = 16384), 2 warps per SM.
//
// Grid z splits each row's inner range (the keys of the forward and of set_attn_bwd_q,
// the query rows of set_attn_bwd_kv) into gridDim.z ranges of `split` sets (a multiple
// of TJ): with few rows and long causal rows a block's tiles are one long serial chain
// (16 tiles at M = 512 for the last rows) while most of the GPU idles. With one range
// the kernels write their outputs; with more, each range writes its partial sums to
// range z of a partial buffer (the forward: the unnormalized output, running max and
// sum; the backward: its gradient rows), combined in range order afterwards
// (set_attn_fwd_combine here; the backward's by the host, a fixed-shape sum): the same
// bits on every run for a given split.

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<head dimension>"
#endif
#ifndef CONTENT
#error "compile with -DCONTENT=0|1"
#endif
#ifndef SA_LANES
#define SA_LANES 1
#endif
#define THREADS 128
#define ROWS (THREADS / SA_LANES)
#define DPL ((HEAD_DIM + SA_LANES - 1) / SA_LANES)  // dims per lane
#define TJ 32
#define KPL (TJ / SA_LANES)  // keys (or query rows) of a tile per lane, for per-pair scalars
#if TJ % SA_LANES != 0
#error "SA_LANES must divide the tile"
#endif
#define NEG_INF __int_as_float(0xff800000)

// The lanes of this thread's row group, for shuffles: groups of one warp may take
// different branches (each group's branch depends on its own row only).
__device__ __forceinline__ unsigned int group_mask() {
    if (SA_LANES >= 32) return 0xffffffffu;
    const unsigned int lane = threadIdx.x & 31u;
    return ((1u << SA_LANES) - 1u) << (lane & ~(unsigned int)(SA_LANES - 1));
}

// The sum of v over the row group, the same bits in every lane of the group.
__device__ __forceinline__ float group_sum(float v, unsigned int mask) {
#pragma unroll
    for (int o = SA_LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
    return v;
}

// The max of v over the row group.
__device__ __forceinline__ float group_max(float v, unsigned int mask) {
#pragma unroll
    for (int o = SA_LANES / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(mask, v, o));
    return v;
}

// The score of one pair from its Delta, content dot product and the head's constants;
// also returns the kernel value K = exp(-gamma Delta) (the gamma gradient needs it).
__device__ __forceinline__ float pair_score(float delta, float dot, float gamma, float beta,
                                            float inv_tau, float* kernel) {
    const float k = expf(-gamma * delta);
    *kernel = k;
    return (k + beta * dot) * inv_tau;
}

// Stages rows j0 .. j0 + TJ of a [M, D] matrix (zeros past m) into `dst`.
__device__ __forceinline__ void stage_rows(float (*dst)[HEAD_DIM], const float* src, int j0,
                                           int m) {
    for (int e = threadIdx.x; e < TJ * HEAD_DIM; e += THREADS) {
        const int r = e / HEAD_DIM, d = e % HEAD_DIM;
        dst[r][d] = j0 + r < m ? src[(size_t)(j0 + r) * HEAD_DIM + d] : 0.0f;
    }
}

// Stages the [R, C] tile of Delta and attend at (i0, j0) (rows i0.., columns j0..), read
// along j (contiguous): [ROWS, TJ] query rows x keys in the query-major kernels, [TJ,
// ROWS] query rows x the block's keys in set_attn_bwd_kv.
template <int R, int C>
__device__ __forceinline__ void stage_pairs(float (*dl)[C + 1], unsigned char (*at)[C + 1],
                                            const float* delta, const unsigned char* attend,
                                            int i0, int j0, int m) {
    for (int e = threadIdx.x; e < R * C; e += THREADS) {
        const int r = e / C, c = e % C;
        const int i = i0 + r, j = j0 + c;
        const bool in = i < m && j < m;
        const size_t at_ij = (size_t)i * m + j;
        dl[r][c] = in ? delta[at_ij] : 0.0f;
        at[r][c] = in ? attend[at_ij] : 0;
    }
}

// After stage_pairs: a barrier, then whether any row of the block may attend a key of
// the tile (uniform across the block). Under the causal rule the tiles past the block's
// last set are skipped whole: half the work.
__device__ __forceinline__ bool tile_used(unsigned char (*at)[TJ + 1], int rloc, bool live,
                                          int width) {
    __syncthreads();
    bool mine = false;
    if (live)
        for (int r = 0; r < width; ++r) mine |= at[rloc][r] != 0;
    return __syncthreads_or(mine);
}

extern "C" __global__ void __launch_bounds__(THREADS)
set_attn_fwd(const float* __restrict__ delta, const unsigned char* __restrict__ attend,
             const float* __restrict__ gamma, const float* __restrict__ tau,
             const float* __restrict__ v, const float* __restrict__ qa,
             const float* __restrict__ kb, float beta, float* __restrict__ out,
             float* __restrict__ lse, float* __restrict__ part_acc,
             float* __restrict__ part_stat, int heads, int m, int split) {
    __shared__ float vs[TJ][HEAD_DIM];
#if CONTENT
    __shared__ float ks[TJ][HEAD_DIM];
#endif
    __shared__ float dl[ROWS][TJ + 1];
    __shared__ unsigned char at[ROWS][TJ + 1];
    const int bh = blockIdx.y;
    const int b = bh / heads, h = bh % heads;
    const int lane = threadIdx.x % SA_LANES, rloc = threadIdx.x / SA_LANES;
    const unsigned int mask = group_mask();
    const int i0 = blockIdx.x * ROWS;
    const int i = i0 + rloc;
    const bool live = i < m;
    const size_t row = (size_t)bh * m + (live ? i : 0);
    const float g = gamma[h], inv_tau = 1.0f / tau[h];
    const float* db = delta + (size_t)b * m * m;
    const unsigned char* ab = attend + (size_t)b * m * m;
    const float* vb = v + (size_t)bh * m * HEAD_DIM;
#if CONTENT
    const float* kbb = kb + (size_t)bh * m * HEAD_DIM;
    float qr[DPL];
#pragma unroll
    for (int u = 0; u < DPL; ++u) {
        const int d = lane + SA_LANES * u;
        qr[u] = (live && d < HEAD_DIM) ? qa[row * HEAD_DIM + d] : 0.0f;
    }
#endif
    float acc[DPL];
#pragma unroll
    for (int u = 0; u < DPL; ++u) acc[u] = 0.0f;
    float run_max = NEG_INF, run_sum = 0.0f;

    const int j_end = min(m, (int)(blockIdx.z + 1) * split);
    for (int j0 = blockIdx.z * split; j0 < j_end; j0 += TJ) {
        const int width = min(TJ, j_end - j0);
        stage_pairs<ROWS, TJ>(dl, at, db, ab, i0, j0, m);
        if (!tile_used(at, rloc, live, width)) continue;
        stage_rows(vs, vb, j0, m);
#if CONTENT
        stage_rows(ks, kbb, j0, m);
#endif
        __syncthreads();
        if (live) {
            // The tile's scores, KPL per lane: lane l of the group owns keys l, l +
            // SA_LANES, ... (the exp and the softmax bookkeeping of each pair run once
            // per group, not once per lane), -inf where the row may not attend.
            float sc[KPL];
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
#if CONTENT
                // The content dot products need the whole group; the owner keeps each.
                sc[c] = NEG_INF;
                for (int l = 0; l < SA_LANES; ++l) {
                    const int r = l + SA_LANES * c;
                    if (r >= width || !at[rloc][r]) continue;  // uniform across the group
                    float dot = 0.0f;
#pragma unroll
                    for (int u = 0; u < DPL; ++u) {
                        const int d = lane + SA_LANES * u;
                        if (d < HEAD_DIM) dot += qr[u] * ks[r][d];
                    }
                    dot = group_sum(dot, mask);
                    float k;
                    const float s_r = pair_score(dl[rloc][r], dot, g, beta, inv_tau, &k);
                    if (lane == l) sc[c] = s_r;
                }
#else
                const int r = lane + SA_LANES * c;
                float k;
                sc[c] = (r < width && at[rloc][r])
                            ? pair_score(dl[rloc][r], 0.0f, g, beta, inv_tau, &k)
                            : NEG_INF;
#endif
            }
            // One online-softmax step per tile (as FlashAttention): the tile's max, one
            // rescale of the running sums, then the weights.
            float tile_max = sc[0];
#pragma unroll
            for (int c = 1; c < KPL; ++c) tile_max = fmaxf(tile_max, sc[c]);
            tile_max = group_max(tile_max, mask);
            if (tile_max > NEG_INF) {  // uniform across the group
                const float new_max = fmaxf(run_max, tile_max);
                const float scale = expf(run_max - new_max);  // 0 at the first tile
                float w[KPL], tile_sum = 0.0f;
#pragma unroll
                for (int c = 0; c < KPL; ++c) {
                    w[c] = expf(sc[c] - new_max);  // 0 where sc = -inf
                    tile_sum += w[c];
                }
                run_sum = run_sum * scale + group_sum(tile_sum, mask);
#pragma unroll
                for (int u = 0; u < DPL; ++u) acc[u] *= scale;
#pragma unroll
                for (int c = 0; c < KPL; ++c) {
                    for (int l = 0; l < SA_LANES; ++l) {
                        const float wr = __shfl_sync(mask, w[c], l, SA_LANES);
                        if (wr == 0.0f) continue;  // uniform: masked (or negligible)
                        const int r = l + SA_LANES * c;
#pragma unroll
                        for (int u = 0; u < DPL; ++u) {
                            const int d = lane + SA_LANES * u;
                            if (d < HEAD_DIM) acc[u] += wr * vs[r][d];
                        }
                    }
                }
                run_max = new_max;
            }
        }
        __syncthreads();
    }
    if (!live) return;
    if (gridDim.z > 1) {
        // Range z's partial: the unnormalized sums at its running max.
        const size_t prow = (size_t)blockIdx.z * gridDim.y * m + row;
#pragma unroll
        for (int u = 0; u < DPL; ++u) {
            const int d = lane + SA_LANES * u;
            if (d < HEAD_DIM) part_acc[prow * HEAD_DIM + d] = acc[u];
        }
        if (lane == 0) {
            part_stat[2 * prow] = run_max;
            part_stat[2 * prow + 1] = run_sum;
        }
        return;
    }
    const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
#pragma unroll
    for (int u = 0; u < DPL; ++u) {
        const int d = lane + SA_LANES * u;
        if (d < HEAD_DIM) out[row * HEAD_DIM + d] = acc[u] * inv;
    }
    if (lane == 0) lse[row] = run_sum > 0.0f ? run_max + logf(run_sum) : NEG_INF;
}

// The forward's `ranges` partials of `rows` rows -> out and lse: one thread per output
// element, the ranges merged in order (max of the running maxes, each range's sums
// rescaled to it), as the online softmax would have merged them.
extern "C" __global__ void set_attn_fwd_combine(const float* __restrict__ part_acc,
                                                const float* __restrict__ part_stat,
                                                float* __restrict__ out,
                                                float* __restrict__ lse, long long rows,
                                                int ranges) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= rows * HEAD_DIM) return;
    const long long row = e / HEAD_DIM;
    float top = NEG_INF;
    for (int z = 0; z < ranges; ++z) top = fmaxf(top, part_stat[2 * (z * rows + row)]);
    float sum = 0.0f, acc = 0.0f;
    if (top > NEG_INF) {
        for (int z = 0; z < ranges; ++z) {
            const size_t prow = (size_t)z * rows + row;
            const float scale = expf(part_stat[2 * prow] - top);  // 0 for an empty range
            sum += part_stat[2 * prow + 1] * scale;
            acc += part_acc[prow * HEAD_DIM + e % HEAD_DIM] * scale;
        }
    }
    out[e] = sum > 0.0f ? acc / sum : 0.0f;
    if (e % HEAD_DIM == 0) lse[row] = sum > 0.0f ? top + logf(sum) : NEG_INF;
}

// ---- Backward -----------------------------------------------------------------------
// With P_ij = exp(s_ij - lse_i) over the attendable pairs, K_ij = exp(-gamma Delta_ij)
// and D_i = dout_i . out_i:  dS_ij = P_ij (dout_i . v_j - D_i),
//   dv_j   = sum_i P_ij dout_i                        (set_attn_bwd_kv: a group per key)
//   dkb_j  = beta / tau sum_i dS_ij qa_i              (set_attn_bwd_kv)
//   dqa_i  = beta / tau sum_j dS_ij kb_j              (set_attn_bwd_q: a group per query)
//   dgamma = sum_ij dS_ij (-Delta_ij K_ij) / tau      (per-row partials from bwd_q,
//   dtau   = sum_ij dS_ij (-s_ij / tau)                summed by the caller in a fixed order)
// Every output element is summed in a fixed order by one thread (dot products by a
// fixed butterfly over the group): no atomics, so the gradients are the same bits on
// every run.

extern "C" __global__ void __launch_bounds__(THREADS)
set_attn_bwd_q(const float* __restrict__ delta, const unsigned char* __restrict__ attend,
               const float* __restrict__ gamma, const float* __restrict__ tau,
               const float* __restrict__ v, const float* __restrict__ qa,
               const float* __restrict__ kb, float beta, const float* __restrict__ out,
               const float* __restrict__ lse, const float* __restrict__ dout,
               float* __restrict__ dqa, float* __restrict__ dsum,
               float* __restrict__ gamma_rows, float* __restrict__ tau_rows, int heads,
               int m, int split) {
    __shared__ float vs[TJ][HEAD_DIM];
#if CONTENT
    __shared__ float ks[TJ][HEAD_DIM];
#endif
    __shared__ float dl[ROWS][TJ + 1];
    __shared__ unsigned char at[ROWS][TJ + 1];
    const int bh = blockIdx.y;
    const int b = bh / heads, h = bh % heads;
    const int lane = threadIdx.x % SA_LANES, rloc = threadIdx.x / SA_LANES;
    const unsigned int mask = group_mask();
    const int i0 = blockIdx.x * ROWS;
    const int i = i0 + rloc;
    const bool live = i < m;
    const size_t row = (size_t)bh * m + (live ? i : 0);
    const float g = gamma[h], inv_tau = 1.0f / tau[h];
    const float* db = delta + (size_t)b * m * m;
    const unsigned char* ab = attend + (size_t)b * m * m;
    const float* vb = v + (size_t)bh * m * HEAD_DIM;
    const float row_lse = live ? lse[row] : NEG_INF;
    float gr[DPL];
    float d_i = 0.0f;
#pragma unroll
    for (int u = 0; u < DPL; ++u) {
        const int d = lane + SA_LANES * u;
        const bool in = live && d < HEAD_DIM;
        gr[u] = in ? dout[row * HEAD_DIM + d] : 0.0f;
        d_i += gr[u] * (in ? out[row * HEAD_DIM + d] : 0.0f);
    }
    d_i = group_sum(d_i, mask);
#if CONTENT
    const float* kbb = kb + (size_t)bh * m * HEAD_DIM;
    float qr[DPL], dq[DPL];
#pragma unroll
    for (int u = 0; u < DPL; ++u) {
        const int d = lane + SA_LANES * u;
        qr[u] = (live && d < HEAD_DIM) ? qa[row * HEAD_DIM + d] : 0.0f;
        dq[u] = 0.0f;
    }
#endif
    float g_acc = 0.0f, t_acc = 0.0f;
    const bool active = live && row_lse > NEG_INF;
    const int j_end = min(m, (int)(blockIdx.z + 1) * split);
    for (int j0 = blockIdx.z * split; j0 < j_end; j0 += TJ) {
        const int width = min(TJ, j_end - j0);
        stage_pairs<ROWS, TJ>(dl, at, db, ab, i0, j0, m);
        if (!tile_used(at, rloc, active, width)) continue;
        stage_rows(vs, vb, j0, m);
#if CONTENT
        stage_rows(ks, kbb, j0, m);
#endif
        __syncthreads();
        if (active) {
            // First the group's dot products of the tile (dout_i . v_j, and with the
            // content term qa_i . kb_j), each kept by the lane that owns key j (lane l:
            // keys l, l + SA_LANES, ...); then the per-pair scalars, KPL keys per lane at
            // once, instead of every lane repeating them key after key.
            float dpo[KPL], doto[KPL];
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                dpo[c] = 0.0f;
                doto[c] = 0.0f;
                for (int l = 0; l < SA_LANES; ++l) {
                    const int r = l + SA_LANES * c;
                    if (r >= width || !at[rloc][r]) continue;  // uniform across the group
                    float dot = 0.0f, dp = 0.0f;
#pragma unroll
                    for (int u = 0; u < DPL; ++u) {
                        const int d = lane + SA_LANES * u;
                        if (d < HEAD_DIM) {
#if CONTENT
                            dot += qr[u] * ks[r][d];
#endif
                            dp += gr[u] * vs[r][d];
                        }
                    }
#if CONTENT
                    dot = group_sum(dot, mask);
#endif
                    dp = group_sum(dp, mask);
                    if (lane == l) {
                        dpo[c] = dp;
                        doto[c] = dot;
                    }
                }
            }
            float dso[KPL];
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                const int r = lane + SA_LANES * c;
                dso[c] = 0.0f;
                if (r < width && at[rloc][r]) {
                    float k;
                    const float delta_ij = dl[rloc][r];
                    const float s_ij = pair_score(delta_ij, doto[c], g, beta, inv_tau, &k);
                    const float ds = expf(s_ij - row_lse) * (dpo[c] - d_i);
                    dso[c] = ds;
                    g_acc += ds * (-delta_ij * k) * inv_tau;
                    // sum_j dS_ij = 0, so shifting s by the row's lse changes nothing but
                    // the cancellation error of the fp32 sum (s - lse is small).
                    t_acc += ds * (-(s_ij - row_lse) * inv_tau);
                }
            }
#if CONTENT
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                for (int l = 0; l < SA_LANES; ++l) {
                    const float cr = __shfl_sync(mask, dso[c], l, SA_LANES) * beta * inv_tau;
                    if (cr == 0.0f) continue;  // uniform across the group
                    const int r = l + SA_LANES * c;
#pragma unroll
                    for (int u = 0; u < DPL; ++u) {
                        const int d = lane + SA_LANES * u;
                        if (d < HEAD_DIM) dq[u] += cr * ks[r][d];
                    }
                }
            }
#else
            (void)dso;
#endif
        }
        __syncthreads();
    }
    // Each lane summed its own keys' terms: the group's sums, in a fixed butterfly.
    g_acc = group_sum(g_acc, mask);
    t_acc = group_sum(t_acc, mask);
    if (!live) return;
    // Range z's partials (one range: the outputs themselves).
    const size_t prow = (size_t)blockIdx.z * gridDim.y * m + row;
#if CONTENT
#pragma unroll
    for (int u = 0; u < DPL; ++u) {
        const int d = lane + SA_LANES * u;
        if (d < HEAD_DIM) dqa[prow * HEAD_DIM + d] = dq[u];
    }
#endif
    if (lane == 0) {
        if (blockIdx.z == 0) dsum[row] = d_i;  // the same in every range
        gamma_rows[prow] = g_acc;
        tau_rows[prow] = t_acc;
    }
}

extern "C" __global__ void __launch_bounds__(THREADS)
set_attn_bwd_kv(const float* __restrict__ delta, const unsigned char* __restrict__ attend,
                const float* __restrict__ gamma, const float* __restrict__ tau,
                const float* __restrict__ v, const float* __restrict__ qa,
                const float* __restrict__ kb, float beta, const float* __restrict__ lse,
                const float* __restrict__ dout, const float* __restrict__ dsum,
                float* __restrict__ dv, float* __restrict__ dkb, int heads, int m,
                int split) {
    __shared__ float gs[TJ][HEAD_DIM];
#if CONTENT
    __shared__ float qs[TJ][HEAD_DIM];
#endif
    __shared__ float lse_s[TJ];
    __shared__ float dsum_s[TJ];
    __shared__ float dlt[TJ][ROWS + 1];
    __shared__ unsigned char att[TJ][ROWS + 1];
    const int bh = blockIdx.y;
    const int b = bh / heads, h = bh % heads;
    const int lane = threadIdx.x % SA_LANES, rloc = threadIdx.x / SA_LANES;
    const int j = blockIdx.x * ROWS + rloc;
    const bool live = j < m;
    const size_t row = (size_t)bh * m + (live ? j : 0);
    const float g = gamma[h], inv_tau = 1.0f / tau[h];
    const float* db = delta + (size_t)b * m * m;
    const unsigned char* ab = attend + (size_t)b * m * m;
    const float* gb = dout + (size_t)bh * m * HEAD_DIM;
    float dvr[DPL];
#pragma unroll
    for (int u = 0; u < DPL; ++u) dvr[u] = 0.0f;
    const unsigned int mask = group_mask();
#if CONTENT
    const float* qb = qa + (size_t)bh * m * HEAD_DIM;
    float vr[DPL], kr[DPL], dk[DPL];
#pragma unroll
    for (int u = 0; u < DPL; ++u) {
        const int d = lane + SA_LANES * u;
        const bool in = live && d < HEAD_DIM;
        vr[u] = in ? v[row * HEAD_DIM + d] : 0.0f;
        kr[u] = in ? kb[row * HEAD_DIM + d] : 0.0f;
        dk[u] = 0.0f;
    }
#endif
    const int j0 = blockIdx.x * ROWS;
    const int q_end = min(m, (int)(blockIdx.z + 1) * split);
    for (int q0 = blockIdx.z * split; q0 < q_end; q0 += TJ) {
        const int width = min(TJ, q_end - q0);
        // The [TJ, ROWS] tile of Delta and attend (query rows q0.., this block's keys),
        // read along the keys (contiguous), and the query rows' lse and D.
        stage_pairs<TJ, ROWS>(dlt, att, db, ab, q0, j0, m);
        if (threadIdx.x < TJ) {
            const int qi = q0 + threadIdx.x;
            lse_s[threadIdx.x] = qi < m ? lse[(size_t)bh * m + qi] : NEG_INF;
            dsum_s[threadIdx.x] = qi < m ? dsum[(size_t)bh * m + qi] : 0.0f;
        }
        __syncthreads();
        // Skip a query tile none of whose rows attends a key of this block.
        bool mine = false;
        if (live)
            for (int r = 0; r < width; ++r) mine |= att[r][rloc] != 0 && lse_s[r] > NEG_INF;
        if (!__syncthreads_or(mine)) continue;
        stage_rows(gs, gb, q0, m);
#if CONTENT
        stage_rows(qs, qb, q0, m);
#endif
        __syncthreads();
        if (live) {
            // P_ij for the tile's query rows, KPL per lane (lane l: rows l, l + SA_LANES,
            // ...), then broadcast row by row into the sums. With the content term the
            // dot products need the whole group first; the owner keeps each.
            float po[KPL], co[KPL];
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                float dot = 0.0f, dp = 0.0f;
#if CONTENT
                for (int l = 0; l < SA_LANES; ++l) {
                    const int r = l + SA_LANES * c;
                    if (r >= width || !att[r][rloc] || !(lse_s[r] > NEG_INF)) continue;
                    float t_dot = 0.0f, t_dp = 0.0f;
#pragma unroll
                    for (int u = 0; u < DPL; ++u) {
                        const int d = lane + SA_LANES * u;
                        if (d < HEAD_DIM) {
                            t_dot += qs[r][d] * kr[u];
                            t_dp += gs[r][d] * vr[u];
                        }
                    }
                    t_dot = group_sum(t_dot, mask);
                    t_dp = group_sum(t_dp, mask);
                    if (lane == l) {
                        dot = t_dot;
                        dp = t_dp;
                    }
                }
#endif
                const int r = lane + SA_LANES * c;
                po[c] = 0.0f;
                co[c] = 0.0f;
                if (r < width && att[r][rloc] && lse_s[r] > NEG_INF) {
                    float k;
                    const float s_ij = pair_score(dlt[r][rloc], dot, g, beta, inv_tau, &k);
                    po[c] = expf(s_ij - lse_s[r]);
                    co[c] = po[c] * (dp - dsum_s[r]) * beta * inv_tau;
                }
            }
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                for (int l = 0; l < SA_LANES; ++l) {
                    const float p = __shfl_sync(mask, po[c], l, SA_LANES);
#if CONTENT
                    const float cr = __shfl_sync(mask, co[c], l, SA_LANES);
#endif
                    if (p == 0.0f) continue;  // uniform across the group
                    const int r = l + SA_LANES * c;
#pragma unroll
                    for (int u = 0; u < DPL; ++u) {
                        const int d = lane + SA_LANES * u;
                        if (d < HEAD_DIM) {
                            dvr[u] += p * gs[r][d];
#if CONTENT
                            dk[u] += cr * qs[r][d];
#endif
                        }
                    }
                }
            }
            (void)co;
        }
        __syncthreads();
    }
    if (!live) return;
    // Range z's partials (one range: the outputs themselves).
    const size_t prow = (size_t)blockIdx.z * gridDim.y * m + row;
#pragma unroll
    for (int u = 0; u < DPL; ++u) {
        const int d = lane + SA_LANES * u;
        if (d < HEAD_DIM) dv[prow * HEAD_DIM + d] = dvr[u];
    }
#if CONTENT
#pragma unroll
    for (int u = 0; u < DPL; ++u) {
        const int d = lane + SA_LANES * u;
        if (d < HEAD_DIM) dkb[prow * HEAD_DIM + d] = dk[u];
    }
#endif
}
