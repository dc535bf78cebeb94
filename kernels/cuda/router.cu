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

extern "C" __global__ void __launch_bounds__(ROWS)
router_fwd(const float* __restrict__ q, const float* __restrict__ z,
           const unsigned char* __restrict__ route, float* __restrict__ out,
           float* __restrict__ lse, int heads, int len, int m, int topk) {
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
