// The token -> set router of set-kernel attention, fused: for token t of sequence b and
// head h, gates = softmax_j(q_t . z_j) over the sets j that t may use (route[b, t, j]),
// optionally only the TOPK best (renormalized), and out_t = sum_j gates_j z_j. A token
// with no visible set gets a zero output and lse = -inf. The reference is the router
// half of `SetAttention::forward` (kernels/src/lib.rs); tests in kernels/src/tests_cuda.rs.
//
// Layout (row-major): q [B, H, L, D] (or token-major [B, L, H, D]: tok_row), z [B, H, M, D],
// route [B, L, M] u8, out like q, lse [B, H, L]. D = HEAD_DIM is fixed at compile time (NVRTC option
// -DHEAD_DIM=..), so a thread's query and accumulator live in registers. The per-token
// rows (q, out, and in the backward dout, dq) are `tok_t`: fp32, or bf16 with
// -DTOKEN_BF16=1, read and written as such (a bf16 step passes its activations without
// fp32 copies: each would be a cast kernel and twice the memory of every saved row);
// everything per set (z, dz), lse and all arithmetic stay fp32.
//
// Grid: x over blocks of ROWS tokens, y over B * H. One thread per token (the tensor-core
// top-k forward: 16 tokens per warp); the block stages TJ sets' z rows in shared memory
// and every thread reads them as broadcasts.
// Without top-k (router_fwd) the softmax is online (one pass, running max and sum, as
// FlashAttention); with top-k (router_fwd_topk) a first pass keeps the TOPK best logits
// in registers, a second mixes them. The route comes in as bits (route_pack).

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<head dimension>"
#endif
#define ROWS 128
#define TJ 32
#define TOPK_MAX 8
// NVRTC has no math.h: -inf by its bits.
#define NEG_INF __int_as_float(0xff800000)

#ifndef TOKEN_BF16
#define TOKEN_BF16 0
#endif

// A float rounded to bf16 (round to nearest even), as its 16 bits.
__device__ __forceinline__ unsigned short to_bf16(float v) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

#if TOKEN_BF16
typedef unsigned short tok_t;  // bf16 bits (no cuda_bf16.h under NVRTC)
__device__ __forceinline__ float tok_load(const tok_t* p, size_t i) {
    return __uint_as_float((unsigned int)p[i] << 16);
}
__device__ __forceinline__ void tok_store(tok_t* p, size_t i, float v) { p[i] = to_bf16(v); }
#else
typedef float tok_t;
__device__ __forceinline__ float tok_load(const tok_t* p, size_t i) { return p[i]; }
__device__ __forceinline__ void tok_store(tok_t* p, size_t i, float v) { p[i] = v; }
#endif

// Element offset of the row of token t, sequence-head bh (= b * heads + h), in a token
// tensor: head-major [B, H, L, D] (token_major 0), or token-major [B, L, H, D] (1), the
// layout of a projection's output viewed per head: the caller passes it as it is instead
// of a transposing copy of every row in and out. Same layout for q, out, dout and dq;
// lse, kept and the other per-token buffers are always indexed bh * len + t.
__device__ __forceinline__ size_t tok_row(int bh, int t, int heads, int len, int token_major) {
    if (token_major) {
        const int b = bh / heads, h = bh - b * heads;
        return (((size_t)b * len + t) * heads + h) * HEAD_DIM;
    }
    return ((size_t)bh * len + t) * HEAD_DIM;
}

// Dimensions per lane when a warp's lanes split one row (lane + 32 u).
#define LANE_DIMS ((HEAD_DIM + 31) / 32)

// Route bits: route_bits[b, t, w] bit i = route[b, t, 32 w + i] (0 past m). A thread
// reads one word per tile of TJ = 32 sets instead of 32 bytes from its own row, which
// the block's 128 threads (128 different rows) would each fetch as separate L1
// wavefronts. Built once per router call by route_pack, shared by forward and backward.
#if TJ != 32
#error "route words hold one tile of TJ = 32 sets"
#endif
extern "C" __global__ void route_pack(const unsigned char* __restrict__ route,
                                      unsigned int* __restrict__ bits, long long rows, int m,
                                      int words) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= rows * words) return;
    const long long row = e / words;
    const int w = (int)(e % words);
    const unsigned char* r = route + row * m;
    unsigned int v = 0;
    for (int i = 0; i < 32; ++i) {
        const int j = w * 32 + i;
        if (j < m && r[j]) v |= 1u << i;
    }
    bits[e] = v;
}

// Whether any token of the block may use a set of the tile whose route word is `word`: a
// tile no token sees (under the causal rule, every set ending after the block's last
// token) is skipped whole, which halves the work of a causal route. Uniform across the
// block.
__device__ __forceinline__ bool tile_used(unsigned int word) {
    return __syncthreads_or(word != 0u);
}

// q_t . z_r over HEAD_DIM in four independent partial sums (four FMA chains in flight).
__device__ __forceinline__ float dot_row(const float* qr, const float* zr) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma unroll
    for (int d = 0; d + 3 < HEAD_DIM; d += 4) {
        s0 += qr[d] * zr[d];
        s1 += qr[d + 1] * zr[d + 1];
        s2 += qr[d + 2] * zr[d + 2];
        s3 += qr[d + 3] * zr[d + 3];
    }
#pragma unroll
    for (int d = HEAD_DIM & ~3; d < HEAD_DIM; ++d) s0 += qr[d] * zr[d];
    return (s0 + s1) + (s2 + s3);
}

// Inserts (logit, set) into a descending list of the TOPK_MAX best (a tie keeps the
// earlier set). The list always holds TOPK_MAX entries whatever the run-time `topk`
// (the top `topk` of it are the top `topk`; the mix and the kept sets read only those):
// the entry test is then against best[TOPK_MAX - 1], a register, where a test against
// best[topk - 1] would index the register list at run time (moving it to local memory)
// or take a min over it. A logit not above the list's last entry, or below `floor` (a
// bound from other lists of the same token, see router_fwd_topk_mma; -inf elsewhere),
// cannot be among the best, which after the first few tiles is nearly every logit, so
// the insertion is skipped.
__device__ __forceinline__ void insert_top(float (&best)[TOPK_MAX], int (&best_j)[TOPK_MAX],
                                           float logit, int set, float floor) {
    if (!(logit > best[TOPK_MAX - 1] && logit >= floor)) return;
    float v = logit;
    int vj = set;
#pragma unroll
    for (int u = 0; u < TOPK_MAX; ++u) {
        if (v > best[u]) {
            const float tv = best[u];
            const int tj = best_j[u];
            best[u] = v;
            best_j[u] = vj;
            v = tv;
            vj = tj;
        }
    }
}

// One thread per token. TOPK false: the online softmax over every visible set, mixing
// as it goes. TOPK true: a first pass keeps the `topk` best logits in registers (no
// accumulator live, so the kernel needs far fewer registers), a second mixes them.
template <bool TOPK>
__device__ __forceinline__ void router_fwd_body(const tok_t* __restrict__ q,
                                                const float* __restrict__ z,
                                                const unsigned int* __restrict__ route_bits,
                                                tok_t* __restrict__ out,
                                                float* __restrict__ lse,
                                                int* __restrict__ kept, int heads, int len,
                                                int m, int topk, int token_major) {
    __shared__ float zs[TJ][HEAD_DIM];
    const int bh = blockIdx.y;
    const int b = bh / heads;
    const int t = blockIdx.x * ROWS + threadIdx.x;
    const bool live = t < len;
    const int words = (m + 31) / 32;
    const float* zb = z + (size_t)bh * m * HEAD_DIM;
    const unsigned int* rbits = route_bits + ((size_t)b * len + (live ? t : 0)) * words;

    const size_t qrow = tok_row(bh, live ? t : 0, heads, len, token_major);
    float qr[HEAD_DIM];
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) qr[d] = live ? tok_load(q, qrow + d) : 0.0f;

    float acc[TOPK ? 1 : HEAD_DIM];
    if (!TOPK) {
#pragma unroll
        for (int d = 0; d < HEAD_DIM; ++d) acc[d] = 0.0f;
    }
    float run_max = NEG_INF, run_sum = 0.0f;
    float best[TOPK_MAX];
    int best_j[TOPK_MAX];
    if (TOPK) {
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) { best[s] = NEG_INF; best_j[s] = -1; }
    }

    for (int j0 = 0; j0 < m; j0 += TJ) {
        const int width = min(TJ, m - j0);
        const unsigned int word = live ? rbits[j0 / 32] : 0u;
        if (!tile_used(word)) continue;
        for (int e = threadIdx.x; e < TJ * HEAD_DIM; e += ROWS) {
            const int r = e / HEAD_DIM, d = e % HEAD_DIM;
            zs[r][d] = r < width ? zb[(size_t)(j0 + r) * HEAD_DIM + d] : 0.0f;
        }
        __syncthreads();
        for (unsigned int rest = word; rest != 0u; rest &= rest - 1u) {
            const int r = __ffs(rest) - 1;
            const float logit = dot_row(qr, zs[r]);
            if (TOPK) {
                insert_top(best, best_j, logit, j0 + r, NEG_INF);
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
        __syncthreads();
    }
    if (!live) return;
    const size_t row = (size_t)bh * len + t;
    if (TOPK) {
        // The kept sets, for the backward pass (-1 past the visible ones).
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) kept[row * TOPK_MAX + s] = s < topk ? best_j[s] : -1;
        run_max = best[0];
        float mix[HEAD_DIM];
#pragma unroll
        for (int d = 0; d < HEAD_DIM; ++d) mix[d] = 0.0f;
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            if (s < topk && best_j[s] >= 0) {
                const float w = expf(best[s] - run_max);
                run_sum += w;
                const float* zr = zb + (size_t)best_j[s] * HEAD_DIM;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) mix[d] += w * zr[d];
            }
        }
        const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
#pragma unroll
        for (int d = 0; d < HEAD_DIM; ++d) tok_store(out, qrow + d, mix[d] * inv);
    } else {
        const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
#pragma unroll
        for (int d = 0; d < HEAD_DIM; ++d) tok_store(out, qrow + d, acc[d] * inv);
    }
    lse[row] = run_sum > 0.0f ? run_max + logf(run_sum) : NEG_INF;
}

extern "C" __global__ void __launch_bounds__(ROWS)
router_fwd(const tok_t* __restrict__ q, const float* __restrict__ z,
           const unsigned int* __restrict__ route_bits, tok_t* __restrict__ out,
           float* __restrict__ lse, int* __restrict__ kept, int heads, int len, int m,
           int topk, int token_major) {
    router_fwd_body<false>(q, z, route_bits, out, lse, kept, heads, len, m, topk, token_major);
}

extern "C" __global__ void __launch_bounds__(ROWS)
router_fwd_topk(const tok_t* __restrict__ q, const float* __restrict__ z,
                const unsigned int* __restrict__ route_bits, tok_t* __restrict__ out,
                float* __restrict__ lse, int* __restrict__ kept, int heads, int len, int m,
                int topk, int token_major) {
    router_fwd_body<true>(q, z, route_bits, out, lse, kept, heads, len, m, topk, token_major);
}

// Runs of N consecutive elements of a row, as floats: 16-byte loads (and stores) when
// `vec` (the caller checks that the run starts 16-byte aligned and that N elements are
// whole 16-byte words), element by element otherwise (the same values either way).
#define TOK_BYTES (TOKEN_BF16 ? 2 : 4)

// Eight bf16 in a 16-byte word -> floats.
__device__ __forceinline__ void unpack_bf16x8(const uint4 w, float* v) {
    const unsigned int words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 8; ++i)
        v[i] = __uint_as_float(i % 2 == 0 ? words[i / 2] << 16 : words[i / 2] & 0xffff0000u);
}

template <int N>
__device__ __forceinline__ void load_run(const tok_t* __restrict__ p, size_t at, bool vec,
                                         float (&v)[N]) {
    if (vec) {
        const uint4* w = reinterpret_cast<const uint4*>(p + at);
#pragma unroll
        for (int k = 0; k < N * TOK_BYTES / 16; ++k) {
            const uint4 x = w[k];
#if TOKEN_BF16
            unpack_bf16x8(x, v + 8 * k);
#else
            v[4 * k] = __uint_as_float(x.x);
            v[4 * k + 1] = __uint_as_float(x.y);
            v[4 * k + 2] = __uint_as_float(x.z);
            v[4 * k + 3] = __uint_as_float(x.w);
#endif
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = tok_load(p, at + i);
}

template <int N>
__device__ __forceinline__ void store_run(tok_t* __restrict__ p, size_t at, bool vec,
                                          const float (&v)[N]) {
    if (vec) {
        uint4* w = reinterpret_cast<uint4*>(p + at);
#pragma unroll
        for (int k = 0; k < N * TOK_BYTES / 16; ++k) {
#if TOKEN_BF16
            const float* x = v + 8 * k;
            w[k] = make_uint4((unsigned int)to_bf16(x[0]) | ((unsigned int)to_bf16(x[1]) << 16),
                              (unsigned int)to_bf16(x[2]) | ((unsigned int)to_bf16(x[3]) << 16),
                              (unsigned int)to_bf16(x[4]) | ((unsigned int)to_bf16(x[5]) << 16),
                              (unsigned int)to_bf16(x[6]) | ((unsigned int)to_bf16(x[7]) << 16));
#else
            w[k] = make_uint4(__float_as_uint(v[4 * k]), __float_as_uint(v[4 * k + 1]),
                              __float_as_uint(v[4 * k + 2]), __float_as_uint(v[4 * k + 3]));
#endif
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) tok_store(p, at + i, v[i]);
}

// A run of a set row, fp32 or bf16 (`z16`), the same way.
template <int N>
__device__ __forceinline__ void load_set_run(const void* __restrict__ z, bool z16, size_t at,
                                             bool vec, float (&v)[N]) {
    if (z16) {
        const unsigned short* p = static_cast<const unsigned short*>(z) + at;
        if (vec) {
#pragma unroll
            for (int k = 0; k < N / 8; ++k) unpack_bf16x8(reinterpret_cast<const uint4*>(p)[k], v + 8 * k);
            return;
        }
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = __uint_as_float((unsigned int)p[i] << 16);
        return;
    }
    const float* p = static_cast<const float*>(z) + at;
    if (vec) {
#pragma unroll
        for (int k = 0; k < N / 4; ++k) {
            const float4 x = reinterpret_cast<const float4*>(p)[k];
            v[4 * k] = x.x; v[4 * k + 1] = x.y; v[4 * k + 2] = x.z; v[4 * k + 3] = x.w;
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = p[i];
}

// ---- Top-k forward on tensor cores (bf16 inputs) ---------------------------------------
// For q and z that hold bf16 values (a bf16 training step; the caller says so), the
// logits of a warp's 16 tokens against a tile of 32 sets are four m16n8k16 bf16 MMAs per
// 16 dimensions with fp32 accumulation: the products are exact, only the order of the
// fp32 sums differs from the CUDA-core kernel. A block is 4 warps = 64 tokens. Each lane
// keeps a top-k list for the two tokens (rows g and g + 8 of its warp's 16) over the 8 of
// every 32 sets its accumulator fragment holds; the 4 lanes of a quad (the same rows) then
// merge their lists (by value, a tie going to the lower set index, as the sequential
// insertion does), and split the mix of the kept z rows by dimension.
#ifndef MMA_WARPS
#define MMA_WARPS 4
#endif
#define MMA_ROWS (MMA_WARPS * 16)
#define ZS_PAD 8  // bf16 per z row of padding: the 8 rows a B fragment reads hit 8 bank groups

__device__ __forceinline__ unsigned int pack_bf16(float lo, float hi) {
    return (unsigned int)to_bf16(lo) | ((unsigned int)to_bf16(hi) << 16);
}

// Row elements c and c + 1 (c even) as one register of two bf16: one 32-bit load when the
// row is bf16 already.
__device__ __forceinline__ unsigned int tok_pair(const tok_t* row, int c) {
#if TOKEN_BF16
    return *reinterpret_cast<const unsigned int*>(row + c);
#else
    return pack_bf16(row[c], row[c + 1]);
#endif
}

// Whether (va, ja) ranks before (vb, jb): a larger logit, or the same one for an earlier set.
__device__ __forceinline__ bool ranks_before(float va, int ja, float vb, int jb) {
    return va > vb || (va == vb && ja < jb);
}

// Puts the entry ranking first at (va, ja).
__device__ __forceinline__ void order_pair(float& va, int& ja, float& vb, int& jb) {
    if (ranks_before(vb, jb, va, ja)) {
        const float tv = va;
        const int tj = ja;
        va = vb;
        ja = jb;
        vb = tv;
        jb = tj;
    }
}

// The best TOPK_MAX of two ranked lists (this lane's and the one of lane ^ mask), ranked,
// the same in both lanes. Position u keeps the better of v[u] and the other list's
// entry TOPK_MAX - 1 - u: those are the TOPK_MAX best of the union, as a bitonic sequence
// (the upper envelope of a falling and a rising one), which three rounds of
// compare-exchange sort (a bitonic merge: 8 + 12 comparisons instead of the 2 * 8 * 8 of
// ranking every entry against the other list, which made this kernel instruction-bound).
// Both lanes hold the same entries then (the lanes' sets are disjoint; the only equal
// entries are the unfilled (-inf, -1) ones), so they sort to the same list.
__device__ __forceinline__ void merge_lists(float (&v)[TOPK_MAX], int (&j)[TOPK_MAX], int mask) {
#if TOPK_MAX != 8
#error "the bitonic merge is written for lists of 8"
#endif
    float ov[TOPK_MAX];
    int oj[TOPK_MAX];
#pragma unroll
    for (int u = 0; u < TOPK_MAX; ++u) {
        ov[u] = __shfl_xor_sync(0xffffffffu, v[u], mask);
        oj[u] = __shfl_xor_sync(0xffffffffu, j[u], mask);
    }
#pragma unroll
    for (int u = 0; u < TOPK_MAX; ++u) {
        const int w = TOPK_MAX - 1 - u;
        if (ranks_before(ov[w], oj[w], v[u], j[u])) {
            v[u] = ov[w];
            j[u] = oj[w];
        }
    }
#pragma unroll
    for (int dist = TOPK_MAX / 2; dist > 0; dist >>= 1) {
#pragma unroll
        for (int i = 0; i < TOPK_MAX; ++i) {
            if ((i & dist) == 0) order_pair(v[i], j[i], v[i + dist], j[i + dist]);
        }
    }
}

// The weights of a ranked list's first `topk` entries before normalization (0 past them
// and for unfilled ones: set -1): w[s] = exp(bv[s] - bv[0]). Returns their sum (0:
// nothing kept); the gates are w[s] / sum, lse = bv[0] + log(sum).
__device__ __forceinline__ float list_weights(const float (&bv)[TOPK_MAX],
                                              const int (&bj)[TOPK_MAX], int topk,
                                              float (&w)[TOPK_MAX]) {
    const float top = bv[0];
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < TOPK_MAX; ++s) {
        w[s] = (s < topk && bj[s] >= 0) ? expf(bv[s] - top) : 0.0f;
        sum += w[s];
    }
    return sum;
}

// One token's merged list (the same in the 4 lanes of its quad) published by one lane:
// the normalized weights and sets into the warp's mix table (set -1: nothing to add), the
// kept sets and the log-sum-exp to global memory.
__device__ __forceinline__ void publish_row(const float (&bv)[TOPK_MAX],
                                            const int (&bj)[TOPK_MAX],
                                            float (&mix_w)[TOPK_MAX], int (&mix_j)[TOPK_MAX],
                                            float* __restrict__ lse, int* __restrict__ kept,
                                            size_t row, bool live, int topk) {
    float w[TOPK_MAX];
    const float sum = list_weights(bv, bj, topk, w);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int s = 0; s < TOPK_MAX; ++s) {
        mix_w[s] = w[s] * inv;
        mix_j[s] = w[s] > 0.0f ? bj[s] : -1;
    }
    if (!live) return;
#pragma unroll
    for (int s = 0; s < TOPK_MAX; ++s) kept[row * TOPK_MAX + s] = s < topk ? bj[s] : -1;
    lse[row] = sum > 0.0f ? bv[0] + logf(sum) : NEG_INF;
}

// The tensor-core kernel and its helpers need sm_80 (bf16 MMA, cp.async); the host picks
// it only there (`has_bf16_mma`), and for older devices the module goes without it.
#if HEAD_DIM % 16 == 0 && __CUDA_ARCH__ >= 800
// Asynchronous global -> shared copies: 16 bytes per
// copy, `bytes` of them read (0: the 16 bytes are zero-filled, nothing is read).
__device__ __forceinline__ void cp_async16(void* shared_dst, const void* src, int bytes) {
    unsigned int dst;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }"
                 : "=r"(dst)
                 : "l"(shared_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING));
}

// Starts the copy of the z rows of sets j0 .. j0 + TJ - 1 (bf16, from z16: the same
// values as z on this path) into `tile`, 8 dims per 16-byte copy (HEAD_DIM % 16 == 0
// here, and a padded row is 16-byte aligned); rows past the last set are zero-filled.
__device__ __forceinline__ void stage_z_tile(unsigned short (*tile)[HEAD_DIM + ZS_PAD],
                                             const unsigned short* __restrict__ z16, int bh,
                                             int m, int j0) {
    for (int e = threadIdx.x; e < TJ * HEAD_DIM / 8; e += MMA_WARPS * 32) {
        const int r = e / (HEAD_DIM / 8), d = (e % (HEAD_DIM / 8)) * 8;
        const bool real = j0 + r < m;
        const unsigned short* src = z16 + ((size_t)bh * m + (real ? j0 + r : 0)) * HEAD_DIM + d;
        cp_async16(&tile[r][d], src, real ? 16 : 0);
    }
}

extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
router_fwd_topk_mma(const tok_t* __restrict__ q, const unsigned short* __restrict__ z16,  // z, bf16
                    const unsigned int* __restrict__ route_bits, tok_t* __restrict__ out,
                    float* __restrict__ lse, int* __restrict__ kept, int heads, int len,
                    int m, int topk, int token_major) {
    constexpr int KS = HEAD_DIM / 16;
    __shared__ __align__(16) unsigned short zs[2][TJ][HEAD_DIM + ZS_PAD];
    __shared__ float mix_w[MMA_WARPS][16][TOPK_MAX];
    __shared__ int mix_j[MMA_WARPS][16][TOPK_MAX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tig = lane & 3;
    const int bh = blockIdx.y;
    const int b = bh / heads;
    const int words = (m + 31) / 32;
    const int t0 = blockIdx.x * MMA_ROWS + warp * 16;
    const int ta = t0 + g, tb = t0 + g + 8;  // this lane's two tokens
    const bool live_a = ta < len, live_b = tb < len;
    const tok_t* qa = q + tok_row(bh, live_a ? ta : 0, heads, len, token_major);
    const tok_t* qb = q + tok_row(bh, live_b ? tb : 0, heads, len, token_major);
    // A fragments of the warp's 16 x HEAD_DIM queries, once.
    unsigned int af[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        const int c = ks * 16 + tig * 2;
        af[ks][0] = live_a ? tok_pair(qa, c) : 0u;
        af[ks][1] = live_b ? tok_pair(qb, c) : 0u;
        af[ks][2] = live_a ? tok_pair(qa, c + 8) : 0u;
        af[ks][3] = live_b ? tok_pair(qb, c + 8) : 0u;
    }
    const unsigned int* rbits_a = route_bits + ((size_t)b * len + (live_a ? ta : 0)) * words;
    const unsigned int* rbits_b = route_bits + ((size_t)b * len + (live_b ? tb : 0)) * words;
    float best_a[TOPK_MAX], best_b[TOPK_MAX];
    int ja[TOPK_MAX], jb[TOPK_MAX];
#pragma unroll
    for (int u = 0; u < TOPK_MAX; ++u) {
        best_a[u] = NEG_INF; best_b[u] = NEG_INF; ja[u] = -1; jb[u] = -1;
    }
    // A bound on each token's final list: every lane's list holds TOPK_MAX of the token's
    // logits, so the best TOPK_MAX of the union are all at or above the largest of the four
    // lanes' last entries. A lane skips any logit below it (the lists fill from the
    // other lanes' sets too, which cut the insertions of a causal route at 16k about in
    // half); equal logits still enter, so a tie goes to the lower set in the merge.
    float floor_a = NEG_INF, floor_b = NEG_INF;

    // The block's tiles from the first to the last any of its tokens may use: the
    // block's route words are scanned once, all of them in flight together, so a route
    // limited to recent sets (--router-topk) costs its band, not one dependent word load
    // per tile of every set (169 us per call at M = 512 with a band of 8 sets).
    __shared__ int tile_lo, tile_hi;
    if (threadIdx.x == 0) {
        tile_lo = words;
        tile_hi = -1;
    }
    __syncthreads();
    {
        const int block_t0 = blockIdx.x * MMA_ROWS;
        const int block_rows = min(MMA_ROWS, len - block_t0);
        const unsigned int* rbits = route_bits + ((size_t)b * len + block_t0) * words;
        int lo = words, hi = -1;
#pragma unroll 4
        for (int e = threadIdx.x; e < block_rows * words; e += MMA_WARPS * 32) {
            if (rbits[e] != 0u) {
                lo = min(lo, e % words);
                hi = max(hi, e % words);
            }
        }
        if (lo < words) atomicMin(&tile_lo, lo);  // min and max: the same on every run
        if (hi >= 0) atomicMax(&tile_hi, hi);
    }
    __syncthreads();
    const int j_first = tile_lo * TJ, j_last = tile_hi * TJ;  // uniform
    // Two staging buffers: while a tile's MMAs run, the next tile's z rows are on their
    // way (cp.async), and so are the next route words, so neither global latency sits
    // between two tiles. `staged` is the tile whose copy was started into zs[buf]; a
    // tile reached after skipped ones (staged behind) is copied when it is reached.
    int buf = 0, staged = -1;
    unsigned int next_a = live_a && j_first <= j_last ? rbits_a[tile_lo] : 0u;
    unsigned int next_b = live_b && j_first <= j_last ? rbits_b[tile_lo] : 0u;
    for (int j0 = j_first; j0 <= j_last; j0 += TJ) {
        const unsigned int word_a = next_a, word_b = next_b;
        const bool ahead = j0 + TJ <= j_last;
        if (ahead) {
            next_a = live_a ? rbits_a[j0 / 32 + 1] : 0u;
            next_b = live_b ? rbits_b[j0 / 32 + 1] : 0u;
        }
        if (!__syncthreads_or((word_a | word_b) != 0u)) continue;
        if (staged != j0) {
            cp_async_wait<0>();  // a copy into zs[buf] may still be in flight
            stage_z_tile(zs[buf], z16, bh, m, j0);
            cp_async_commit();
        }
        if (ahead) {
            stage_z_tile(zs[buf ^ 1], z16, bh, m, j0 + TJ);
            cp_async_commit();
            staged = j0 + TJ;
            cp_async_wait<1>();  // all but the copy just started
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (__any_sync(0xffffffffu, (word_a | word_b) != 0u)) {
#pragma unroll
            for (int nt = 0; nt < TJ / 8; ++nt) {
                float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) {
                    const unsigned short* zr = &zs[buf][nt * 8 + g][ks * 16 + tig * 2];
                    const unsigned int b0 = *reinterpret_cast<const unsigned int*>(zr);
                    const unsigned int b1 = *reinterpret_cast<const unsigned int*>(zr + 8);
                    asm volatile(
                        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                        : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
                        : "r"(af[ks][0]), "r"(af[ks][1]), "r"(af[ks][2]), "r"(af[ks][3]),
                          "r"(b0), "r"(b1));
                }
                const int r0 = nt * 8 + tig * 2;  // the tile's sets of c0 / c2 (+1: c1 / c3)
                if ((word_a >> r0) & 1u) insert_top(best_a, ja, c0, j0 + r0, floor_a);
                if ((word_a >> (r0 + 1)) & 1u) insert_top(best_a, ja, c1, j0 + r0 + 1, floor_a);
                if ((word_b >> r0) & 1u) insert_top(best_b, jb, c2, j0 + r0, floor_b);
                if ((word_b >> (r0 + 1)) & 1u) insert_top(best_b, jb, c3, j0 + r0 + 1, floor_b);
            }
            // The quad's lanes hold the same two tokens: their lists' last entries bound
            // the tokens' final lists (uniform: inside a warp-wide branch).
            floor_a = fmaxf(best_a[TOPK_MAX - 1], __shfl_xor_sync(0xffffffffu, best_a[TOPK_MAX - 1], 1));
            floor_b = fmaxf(best_b[TOPK_MAX - 1], __shfl_xor_sync(0xffffffffu, best_b[TOPK_MAX - 1], 1));
            floor_a = fmaxf(floor_a, __shfl_xor_sync(0xffffffffu, floor_a, 2));
            floor_b = fmaxf(floor_b, __shfl_xor_sync(0xffffffffu, floor_b, 2));
        }
        __syncthreads();  // every warp is done with zs[buf] before it is refilled
        if (ahead) buf ^= 1;
    }
    cp_async_wait<0>();  // no copy outlives the block's shared memory
    // The quad's four lists per token -> one, the same in all four lanes.
    merge_lists(best_a, ja, 1);
    merge_lists(best_b, jb, 1);
    merge_lists(best_a, ja, 2);
    merge_lists(best_b, jb, 2);
    // Lanes 0 and 1 of each quad publish its two tokens (separate calls, not a list chosen
    // per lane: that would put both lists in local memory).
    if (tig == 0) publish_row(best_a, ja, mix_w[warp][g], mix_j[warp][g], lse, kept,
                              (size_t)bh * len + ta, live_a, topk);
    if (tig == 1) publish_row(best_b, jb, mix_w[warp][g + 8], mix_j[warp][g + 8], lse, kept,
                              (size_t)bh * len + tb, live_b, topk);
    __syncwarp();
    // The mix: groups of HEAD_DIM / 8 lanes, one token each, several tokens per round,
    // each lane 8 consecutive dims (one 16-byte word of a bf16 row) of every kept z row
    // and of the output row. All TOPK_MAX row loads of a token are issued before the first
    // add, and the sum runs in list order (the same bits as the fp32 rows give). One
    // token per round with the lanes over the row took 16 rounds of load latency per
    // warp; this takes ceil(16 / (32 / (HEAD_DIM / 8))), 4 at D = 64. z16 and out are
    // 16-byte aligned (the host's invariant).
    constexpr int MIX_LANES = HEAD_DIM / 8;
    constexpr int MIX_TOKENS = 32 / MIX_LANES;  // per round
    const int mix_r = lane / MIX_LANES, mix_d = (lane % MIX_LANES) * 8;
    const uint4* z16w = reinterpret_cast<const uint4*>(z16 + (size_t)bh * m * HEAD_DIM);
    for (int r0 = 0; r0 < 16; r0 += MIX_TOKENS) {
        const int r = r0 + mix_r;
        if (mix_r >= MIX_TOKENS || r >= 16 || t0 + r >= len) continue;  // no shuffles below
        uint4 raw[TOPK_MAX];
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            const int j = mix_j[warp][r][s];
            raw[s] = j >= 0 ? z16w[((size_t)j * HEAD_DIM + mix_d) / 8] : make_uint4(0u, 0u, 0u, 0u);
        }
        float acc[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            if (mix_j[warp][r][s] < 0) continue;
            const float w = mix_w[warp][r][s];
            float v[8];
            unpack_bf16x8(raw[s], v);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] += w * v[i];
        }
        store_run(out, tok_row(bh, t0 + r, heads, len, token_major) + mix_d, true, acc);
    }
}
#endif

// ---- Top-k forward over per-token candidate lists -----------------------------------
// When a token's route holds at most TOPK_MAX sets (the routing table's own top-k, e.g.
// the recent route of the 8 latest sets), its candidates fit in registers and nothing
// needs tiles of sets: a group of CAND_LANES lanes per (token, head), 8 dims per lane,
// reads the token's route words, lists its candidates (in set order), loads their z
// rows (16-byte runs, all in flight at once), sums the logits over the group (3 shuffle
// steps at D = 64), ranks them (a count among at most TOPK_MAX logits), and mixes the
// kept rows it already holds. One pass over q, z and out and no shared tiles: the tile
// kernels ran short serial blocks at low occupancy for the same rows. A token with more
// candidates than the list holds (the host's hint was wrong, or a few tokens see more)
// takes the general path in the same kernel: every visible set in order, kept by
// insertion (insert_top), then the mix of the kept rows reloaded. Either path writes
// `out`, `lse` and `kept` as router_fwd_topk does (-1 past the kept sets), the kept sets
// in rank order, or in set order when top-k keeps all of a token's candidates (the
// backward reads them in any order).
// Groups are independent: every shuffle names its group's lanes (`gmask`), so groups of
// one warp may take different paths. Rows n enumerate (token, head) with the heads of a
// token adjacent for token-major rows (a warp then reads consecutive bytes), tokens of a
// head adjacent otherwise.
#define CAND_DIMS 8
#define CAND_LANES (HEAD_DIM / CAND_DIMS)
#if HEAD_DIM % CAND_DIMS == 0 && CAND_LANES <= 32 && (CAND_LANES & (CAND_LANES - 1)) == 0
#define CAND_WARPS 8
#define CAND_GROUPS (32 / CAND_LANES)

// A run of CAND_DIMS dims of a set row: 16 bytes of bf16 or 32 of fp32, kept packed
// (the raw words hold half the registers of floats for bf16 rows).
template <bool Z16>
struct SetRun {
    uint4 w[Z16 ? 1 : 2];
    __device__ __forceinline__ void load(const void* __restrict__ z, size_t at) {
        if (Z16) {
            w[0] = *reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(z) + at);
        } else {
            const uint4* p = reinterpret_cast<const uint4*>(static_cast<const float*>(z) + at);
            w[0] = p[0];
            w[Z16 ? 0 : 1] = p[1];
        }
    }
    __device__ __forceinline__ void clear() {
#pragma unroll
        for (int i = 0; i < (Z16 ? 1 : 2); ++i) w[i] = make_uint4(0u, 0u, 0u, 0u);
    }
    __device__ __forceinline__ void floats(float (&v)[CAND_DIMS]) const {
        if (Z16) {
            unpack_bf16x8(w[0], v);
        } else {
#pragma unroll
            for (int k = 0; k < 2; ++k) {
                const uint4 x = w[Z16 ? 0 : k];
                v[4 * k] = __uint_as_float(x.x);
                v[4 * k + 1] = __uint_as_float(x.y);
                v[4 * k + 2] = __uint_as_float(x.z);
                v[4 * k + 3] = __uint_as_float(x.w);
            }
        }
    }
};

// The sum of v over the group's lanes (a butterfly: the same bits in every lane).
__device__ __forceinline__ float cand_sum(float v, unsigned int gmask) {
#pragma unroll
    for (int o = CAND_LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(gmask, v, o, CAND_LANES);
    return v;
}

__device__ __forceinline__ float cand_dot(const float (&qv)[CAND_DIMS], const float (&zv)[CAND_DIMS]) {
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int i = 0; i < CAND_DIMS; i += 2) {
        s0 += qv[i] * zv[i];
        s1 += qv[i + 1] * zv[i + 1];
    }
    return s0 + s1;
}

template <bool Z16>
__device__ __forceinline__ void router_fwd_cand_impl(
    const tok_t* __restrict__ q, const void* __restrict__ z,
    const unsigned int* __restrict__ route_bits, tok_t* __restrict__ out,
    float* __restrict__ lse, int* __restrict__ kept, float* __restrict__ kept_p, int batch,
    int heads, int len, int m, int topk, int token_major, int q_vec) {
    __shared__ int cands[CAND_WARPS][CAND_GROUPS][TOPK_MAX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = lane / CAND_LANES, gl = lane % CAND_LANES;
    const unsigned int gmask =
        CAND_LANES == 32 ? 0xffffffffu : (((1u << CAND_LANES) - 1u) << (group * CAND_LANES));
    const long long rows = (long long)batch * heads * len;
    const long long n = ((long long)blockIdx.x * CAND_WARPS + warp) * CAND_GROUPS + group;
    if (n >= rows) return;  // the whole group: no shuffle of it is left
    int b, h, t;
    if (token_major) {
        const long long bt = n / heads;
        h = (int)(n - bt * heads);
        b = (int)(bt / len);
        t = (int)(bt - (long long)b * len);
    } else {
        const long long bhl = n / len;
        t = (int)(n - bhl * len);
        b = (int)(bhl / heads);
        h = (int)(bhl - (long long)b * heads);
    }
    const int bh = b * heads + h;
    const size_t row = (size_t)bh * len + t;
    const size_t qrow = tok_row(bh, t, heads, len, token_major) + gl * CAND_DIMS;
    const size_t zbase = (size_t)bh * m * HEAD_DIM + gl * CAND_DIMS;
    // The token's candidates: lane gl scans a contiguous run of its route words, so lane
    // order is set order; an inclusive scan of the counts places each lane's sets.
    const int words = (m + 31) / 32;
    const int per_lane = (words + CAND_LANES - 1) / CAND_LANES;
    const unsigned int* rb = route_bits + ((size_t)b * len + t) * words;
    const int w0 = gl * per_lane, w1 = min(words, w0 + per_lane);
    int count = 0;
    for (int w = w0; w < w1; ++w) count += __popc(rb[w]);
    int before = count;
#pragma unroll
    for (int o = 1; o < CAND_LANES; o <<= 1) {
        const int v = __shfl_up_sync(gmask, before, o, CAND_LANES);
        if (gl >= o) before += v;
    }
    const int total = __shfl_sync(gmask, before, CAND_LANES - 1, CAND_LANES);
    before -= count;
    float qv[CAND_DIMS];
    load_run(q, qrow, q_vec != 0, qv);
    float acc[CAND_DIMS];
#pragma unroll
    for (int i = 0; i < CAND_DIMS; ++i) acc[i] = 0.0f;
    int* list = cands[warp][group];
    if (total <= TOPK_MAX) {
        if (count > 0) {
            int at = before;
            for (int w = w0; w < w1; ++w) {
                unsigned int word = rb[w];
                while (word) {
                    list[at++] = w * 32 + __ffs(word) - 1;
                    word &= word - 1u;
                }
            }
        }
        __syncwarp(gmask);
        int js[TOPK_MAX];
        SetRun<Z16> zr[TOPK_MAX];
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            js[s] = s < total ? list[s] : -1;
            zr[s].clear();
            if (js[s] >= 0) zr[s].load(z, zbase + (size_t)js[s] * HEAD_DIM);
        }
        float logit[TOPK_MAX];
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            float zv[CAND_DIMS];
            zr[s].floats(zv);
            logit[s] = cand_dot(qv, zv);
        }
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) logit[s] = cand_sum(logit[s], gmask);
        // The kept slot of each candidate (TOPK_MAX: not kept). When top-k keeps every
        // candidate (the usual case: a routing table's top-k is the router's), slots
        // follow set order; else the rank among the candidates: a larger logit, or the
        // same one for an earlier set (the order insert_top keeps).
        int rank[TOPK_MAX];
        float top = NEG_INF;
        if (total <= topk) {
#pragma unroll
            for (int s = 0; s < TOPK_MAX; ++s) {
                rank[s] = js[s] >= 0 ? s : TOPK_MAX;
                if (js[s] >= 0) top = fmaxf(top, logit[s]);
            }
        } else {
#pragma unroll
            for (int s = 0; s < TOPK_MAX; ++s) {
                int r = 0;
#pragma unroll
                for (int u = 0; u < TOPK_MAX; ++u)
                    r += (u != s && js[u] >= 0 &&
                          (logit[u] > logit[s] || (logit[u] == logit[s] && u < s)));
                rank[s] = (js[s] >= 0 && r < topk) ? r : TOPK_MAX;
                if (rank[s] < TOPK_MAX) top = fmaxf(top, logit[s]);
            }
        }
        float wsum = 0.0f, wt[TOPK_MAX];
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            wt[s] = rank[s] < TOPK_MAX ? expf(logit[s] - top) : 0.0f;
            wsum += wt[s];
        }
        const float inv = wsum > 0.0f ? 1.0f / wsum : 0.0f;
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            if (rank[s] >= TOPK_MAX) continue;
            float zv[CAND_DIMS];
            zr[s].floats(zv);
            const float w = wt[s] * inv;
#pragma unroll
            for (int i = 0; i < CAND_DIMS; ++i) acc[i] += w * zv[i];
        }
        for (int slot = gl; slot < TOPK_MAX; slot += CAND_LANES) {
            int j = -1;
            float p = 0.0f;
#pragma unroll
            for (int s = 0; s < TOPK_MAX; ++s)
                if (rank[s] == slot) {
                    j = js[s];
                    p = wt[s] * inv;
                }
            kept[row * TOPK_MAX + slot] = j;
            kept_p[row * TOPK_MAX + slot] = p;
        }
        if (gl == 0) lse[row] = wsum > 0.0f ? top + logf(wsum) : NEG_INF;
    } else {
        // More candidates than a list holds: every visible set in set order.
        float best[TOPK_MAX];
        int best_j[TOPK_MAX];
#pragma unroll
        for (int u = 0; u < TOPK_MAX; ++u) {
            best[u] = NEG_INF;
            best_j[u] = -1;
        }
        for (int w = 0; w < words; ++w) {
            unsigned int word = rb[w];
            while (word) {
                const int j = w * 32 + __ffs(word) - 1;
                word &= word - 1u;
                SetRun<Z16> zr;
                zr.load(z, zbase + (size_t)j * HEAD_DIM);
                float zv[CAND_DIMS];
                zr.floats(zv);
                insert_top(best, best_j, cand_sum(cand_dot(qv, zv), gmask), j, NEG_INF);
            }
        }
        float wt[TOPK_MAX];
        const float wsum = list_weights(best, best_j, topk, wt);
        const float inv = wsum > 0.0f ? 1.0f / wsum : 0.0f;
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) wt[s] *= inv;
#pragma unroll
        for (int s = 0; s < TOPK_MAX; ++s) {
            if (!(wt[s] > 0.0f)) continue;
            SetRun<Z16> zr;
            zr.load(z, zbase + (size_t)best_j[s] * HEAD_DIM);
            float zv[CAND_DIMS];
            zr.floats(zv);
#pragma unroll
            for (int i = 0; i < CAND_DIMS; ++i) acc[i] += wt[s] * zv[i];
        }
        for (int slot = gl; slot < TOPK_MAX; slot += CAND_LANES) {
            int j = -1;
            float p = 0.0f;
#pragma unroll
            for (int s = 0; s < TOPK_MAX; ++s)
                if (s == slot && s < topk) {
                    j = best_j[s];
                    p = wt[s];
                }
            kept[row * TOPK_MAX + slot] = j;
            kept_p[row * TOPK_MAX + slot] = p;
        }
        const float top = best[0];
        if (gl == 0) lse[row] = wsum > 0.0f ? top + logf(wsum) : NEG_INF;
    }
    // out is the host's allocation (16-byte aligned, rows of whole 16-byte words).
    store_run(out, qrow, true, acc);
}

// The two instances: set rows z in bf16 (a bf16 step's values) or fp32. z is 16-byte
// aligned (the host copies a view that is not) and its rows are whole 16-byte words
// (HEAD_DIM % 8 == 0); q_vec: q's base is 16-byte aligned too.
#define ROUTER_FWD_CAND(NAME, Z16, Z_T)                                                       \
    extern "C" __global__ void __launch_bounds__(CAND_WARPS * 32)                             \
    NAME(const tok_t* __restrict__ q, const Z_T* __restrict__ z,                              \
         const unsigned int* __restrict__ route_bits, tok_t* __restrict__ out,               \
         float* __restrict__ lse, int* __restrict__ kept, float* __restrict__ kept_p,        \
         int batch, int heads, int len, int m, int topk, int token_major, int q_vec) {        \
        router_fwd_cand_impl<Z16>(q, z, route_bits, out, lse, kept, kept_p, batch, heads,    \
                                  len, m, topk, token_major, q_vec);                          \
    }
ROUTER_FWD_CAND(router_fwd_cand_z16, true, unsigned short)
ROUTER_FWD_CAND(router_fwd_cand_z32, false, float)
#endif

// ---- Backward -----------------------------------------------------------------------
// With P_tj = exp(q_t . z_j - lse_t) over the kept sets of token t and
// D_t = dout_t . out_t:  dS_tj = P_tj (dout_t . z_j - D_t),
//   dq_t = sum_j dS_tj z_j                       (router_bwd_dq: one thread per token;
//                                                 with top-k router_bwd_dq_topk: a lane
//                                                 group per token)
//   dz_j = sum_t dS_tj q_t + P_tj dout_t         (router_bwd_dz: one block per set tile;
//                                                 with top-k router_bwd_dz_kept by token
//                                                 chunks, or router_bwd_dz_sparse)
// Each output is a sum in a fixed order by one thread (or a fixed butterfly, and partial
// sums added in chunk order): no atomics, so the gradients are the same bits on every
// run. Kept = route[b, t, j] and, with top-k, j among kept[t].

// Whether set j is kept for the token whose top-k list is `list` (topk 0: all visible).
__device__ __forceinline__ bool in_top(const int* list, int topk, int j) {
    bool found = false;
#pragma unroll
    for (int s = 0; s < TOPK_MAX; ++s) found |= (s < topk && list[s] == j);
    return found;
}

// Without top-k: one thread per token over every visible set, z tiles in shared memory.
extern "C" __global__ void __launch_bounds__(ROWS)
router_bwd_dq(const tok_t* __restrict__ q, const float* __restrict__ z,
              const unsigned int* __restrict__ route_bits, const tok_t* __restrict__ out,
              const float* __restrict__ lse, const tok_t* __restrict__ dout,
              tok_t* __restrict__ dq, float* __restrict__ dsum, int heads, int len, int m,
              int token_major) {
    __shared__ float zs[TJ][HEAD_DIM];
    const int bh = blockIdx.y;
    const int b = bh / heads;
    const int t = blockIdx.x * ROWS + threadIdx.x;
    const bool live = t < len;
    const int words = (m + 31) / 32;
    const size_t row = (size_t)bh * len + (live ? t : 0);
    const size_t qrow = tok_row(bh, live ? t : 0, heads, len, token_major);
    const float* zb = z + (size_t)bh * m * HEAD_DIM;
    const unsigned int* rbits = route_bits + ((size_t)b * len + (live ? t : 0)) * words;
    const float row_lse = live ? lse[row] : NEG_INF;
    float qr[HEAD_DIM], gr[HEAD_DIM], acc[HEAD_DIM];
    float d_t = 0.0f;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) {
        qr[d] = live ? tok_load(q, qrow + d) : 0.0f;
        gr[d] = live ? tok_load(dout, qrow + d) : 0.0f;
        d_t += gr[d] * (live ? tok_load(out, qrow + d) : 0.0f);
        acc[d] = 0.0f;
    }
    const bool empty = !(row_lse > NEG_INF);
    for (int j0 = 0; j0 < m; j0 += TJ) {
        const int width = min(TJ, m - j0);
        const unsigned int word = (live && !empty) ? rbits[j0 / 32] : 0u;
        if (!tile_used(word)) continue;
        for (int e = threadIdx.x; e < TJ * HEAD_DIM; e += ROWS) {
            const int r = e / HEAD_DIM, d = e % HEAD_DIM;
            zs[r][d] = r < width ? zb[(size_t)(j0 + r) * HEAD_DIM + d] : 0.0f;
        }
        __syncthreads();
        for (unsigned int rest = word; rest != 0u; rest &= rest - 1u) {
            const int r = __ffs(rest) - 1;
            const float logit = dot_row(qr, zs[r]);
            const float dp = dot_row(gr, zs[r]);
            const float ds = expf(logit - row_lse) * (dp - d_t);
#pragma unroll
            for (int d = 0; d < HEAD_DIM; ++d) acc[d] += ds * zs[r][d];
        }
        __syncthreads();
    }
    if (!live) return;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) tok_store(dq, qrow + d, acc[d]);
    dsum[row] = d_t;
}

// With top-k: a group of DQ_TOKEN_LANES lanes per token over only its kept sets
// (O(topk D) per token), lane l of the group taking the DQ_PER consecutive dims from
// l * DQ_PER, so every row of q, dout, out, z and dq is read and written whole by one
// group, in 16-byte words when `aligned` (the host's check of the base pointers) and the
// runs are whole words: one load per row and lane instead of DQ_PER strided element
// loads, and whole 32-byte sectors written (element stores of bf16 rows wrote half
// sectors). The host picks the group (a power of two dividing D, about D / 8 dims per
// lane: a whole warp on a 64-wide row spent its time in 5-step shuffle sums, not
// loads). P and dS of each kept slot go to kept_p / kept_ds for the dz kernels; in
// router_bwd_dq_topk_saved_p the forward wrote P there already (router_fwd_cand_*): the
// kernel reads it instead of recomputing the logit, and reads no q row.
#ifndef DQ_TOKEN_LANES
#define DQ_TOKEN_LANES 32
#endif
#if HEAD_DIM % DQ_TOKEN_LANES != 0
#error "the dq lane group must divide the head dimension"
#endif
#define DQ_WARPS 8
#define DQ_PER (HEAD_DIM / DQ_TOKEN_LANES)
#define DQ_BATCH 4  // kept rows loaded together
#if TOPK_MAX % DQ_BATCH != 0
#error "the kept slots come in whole batches"
#endif
// Whole 16-byte words per lane: token rows, fp32 set rows, bf16 set rows.
#define DQ_VEC_TOK ((DQ_PER * TOK_BYTES) % 16 == 0)
#define DQ_VEC_Z32 ((DQ_PER * 4) % 16 == 0)
#define DQ_VEC_Z16 ((DQ_PER * 2) % 16 == 0)

// The sum of v over the lane's group, the same bits in every lane of the group.
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = DQ_TOKEN_LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// At least 3 blocks per SM (at most 85 registers): 2 blocks left the kernel at 25%
// occupancy, latency-bound.
template <bool P_SAVED>
__device__ __forceinline__ void router_bwd_dq_topk_impl(
    const tok_t* __restrict__ q, const void* __restrict__ z, const tok_t* __restrict__ out,
    const float* __restrict__ lse, const int* __restrict__ kept,
    const tok_t* __restrict__ dout, tok_t* __restrict__ dq, float* __restrict__ dsum,
    float* __restrict__ kept_p, float* __restrict__ kept_ds, int heads, int len, int m,
    int topk, int token_major, int z_bf16, int aligned) {
    const int lane = threadIdx.x % DQ_TOKEN_LANES;
    const int t = blockIdx.x * (DQ_WARPS * 32 / DQ_TOKEN_LANES) + threadIdx.x / DQ_TOKEN_LANES;
    // Not an early return: every lane of the warp takes part in the shuffles.
    const bool live = t < len;
    const int bh = blockIdx.y;
    const size_t row = (size_t)bh * len + (live ? t : 0);
    const size_t qrow = tok_row(bh, live ? t : 0, heads, len, token_major) + lane * DQ_PER;
    // z is fp32, or bf16 (z_bf16: a bf16 step's set rows as they are, half the bytes of
    // the eight row reads per token; uniform branch).
    const bool vec_tok = DQ_VEC_TOK && aligned;
    const bool vec_z = (z_bf16 ? DQ_VEC_Z16 : DQ_VEC_Z32) && aligned;
    float qv[DQ_PER], gv[DQ_PER], ov[DQ_PER], acc[DQ_PER];
#pragma unroll
    for (int u = 0; u < DQ_PER; ++u) qv[u] = gv[u] = ov[u] = acc[u] = 0.0f;
    if (live) {
        if (!P_SAVED) load_run(q, qrow, vec_tok, qv);
        load_run(dout, qrow, vec_tok, gv);
        load_run(out, qrow, vec_tok, ov);
    }
    float d_t = 0.0f;
#pragma unroll
    for (int u = 0; u < DQ_PER; ++u) d_t += gv[u] * ov[u];
    d_t = group_sum(d_t);
    const float row_lse = live ? lse[row] : NEG_INF;
    const bool empty = !(row_lse > NEG_INF);
    const size_t zbase = (size_t)bh * m * HEAD_DIM + lane * DQ_PER;
    // The kept rows' runs are loaded DQ_BATCH at a time before their products
    // (independent loads in flight, not one row's latency per slot; all eight at once
    // held 64 more registers and left 2 blocks per SM).
#pragma unroll
    for (int s0 = 0; s0 < TOPK_MAX; s0 += DQ_BATCH) {
        int js[DQ_BATCH];
        float zv[DQ_BATCH][DQ_PER];
#pragma unroll
        for (int b = 0; b < DQ_BATCH; ++b) {
            const int s = s0 + b;
            js[b] = (s < topk && !empty) ? kept[row * TOPK_MAX + s] : -1;
#pragma unroll
            for (int u = 0; u < DQ_PER; ++u) zv[b][u] = 0.0f;
            if (js[b] >= 0) load_set_run(z, z_bf16, zbase + (size_t)js[b] * HEAD_DIM, vec_z, zv[b]);
        }
#pragma unroll
        for (int b = 0; b < DQ_BATCH; ++b) {
            const int s = s0 + b, j = js[b];
            float logit = 0.0f, dp = 0.0f;
#pragma unroll
            for (int u = 0; u < DQ_PER; ++u) {
                if (!P_SAVED) logit += qv[u] * zv[b][u];
                dp += gv[u] * zv[b][u];
            }
            // Every lane shuffles (groups of one warp may differ in j).
            if (!P_SAVED) logit = group_sum(logit);
            dp = group_sum(dp);
            const float p = j < 0 ? 0.0f
                            : P_SAVED ? kept_p[row * TOPK_MAX + s]
                                      : expf(logit - row_lse);
            const float ds = p * (dp - d_t);
#pragma unroll
            for (int u = 0; u < DQ_PER; ++u) acc[u] += ds * zv[b][u];
            if (live && lane == 0) {
                if (!P_SAVED) kept_p[row * TOPK_MAX + s] = p;
                kept_ds[row * TOPK_MAX + s] = ds;
            }
        }
    }
    if (!live) return;
    store_run(dq, qrow, vec_tok, acc);
    if (lane == 0) dsum[row] = d_t;
}

// The two instances (one template, so the first compiles as it did before P could be
// saved): P recomputed from the logits, or read from kept_p (the per-token forward's).
#define ROUTER_BWD_DQ_TOPK(NAME, P_SAVED)                                                     \
    extern "C" __global__ void __launch_bounds__(DQ_WARPS * 32, 3)                            \
    NAME(const tok_t* __restrict__ q, const void* __restrict__ z,                             \
         const tok_t* __restrict__ out, const float* __restrict__ lse,                        \
         const int* __restrict__ kept, const tok_t* __restrict__ dout,                        \
         tok_t* __restrict__ dq, float* __restrict__ dsum, float* __restrict__ kept_p,        \
         float* __restrict__ kept_ds, int heads, int len, int m, int topk, int token_major,   \
         int z_bf16, int aligned) {                                                           \
        router_bwd_dq_topk_impl<P_SAVED>(q, z, out, lse, kept, dout, dq, dsum, kept_p,        \
                                         kept_ds, heads, len, m, topk, token_major, z_bf16,   \
                                         aligned);                                            \
    }
ROUTER_BWD_DQ_TOPK(router_bwd_dq_topk, false)
ROUTER_BWD_DQ_TOPK(router_bwd_dq_topk_saved_p, true)

// Set tiles of SJ sets, token tiles of ST tokens; 256 threads.
#define SJ 16
#define ST (HEAD_DIM > 64 ? 16 : 32)
#define DZ_THREADS 256

// Stages the q and dout rows of tokens t0 .. t0 + width (zeros past them) as fp32.
__device__ __forceinline__ void stage_token_rows(float (*qs)[HEAD_DIM], float (*gs)[HEAD_DIM],
                                                 const tok_t* q, const tok_t* dout, int bh,
                                                 int t0, int width, int heads, int len,
                                                 int token_major) {
    for (int e = threadIdx.x; e < ST * HEAD_DIM; e += DZ_THREADS) {
        const int r = e / HEAD_DIM, d = e % HEAD_DIM;
        const size_t qrow = tok_row(bh, r < width ? t0 + r : 0, heads, len, token_major);
        qs[r][d] = r < width ? tok_load(q, qrow + d) : 0.0f;
        gs[r][d] = r < width ? tok_load(dout, qrow + d) : 0.0f;
    }
}

// The outputs (set c of the tile, dim d) this thread owns, u = 0 .. DZ_OWN - 1. When the
// block size is a multiple of HEAD_DIM (DZ_GROUPED) a thread owns one dim d and DZ_OWN
// consecutive sets: each token's q and g are read from shared memory once for all of
// them, and their P and dS in float4 loads (shared-memory load instructions, not FMAs,
// bounded this loop). Otherwise o = tid + DZ_THREADS u.
constexpr int DZ_OWN = (SJ * HEAD_DIM + DZ_THREADS - 1) / DZ_THREADS;
constexpr bool DZ_GROUPED = DZ_THREADS % HEAD_DIM == 0 && SJ % DZ_OWN == 0;
__device__ __forceinline__ bool dz_owned(int u, int& c, int& d) {
    const int tid = threadIdx.x;
    if (DZ_GROUPED) {
        d = tid % HEAD_DIM;
        c = (tid / HEAD_DIM) * DZ_OWN + u;
        return c < SJ;
    }
    const int o = tid + DZ_THREADS * u;
    c = o / HEAD_DIM;
    d = o % HEAD_DIM;
    return o < SJ * HEAD_DIM;
}

// One token tile's share of the owned outputs: acc_u += sum_r dss[r][c] q[r][d] +
// ps[r][c] g[r][d], r in order.
__device__ __forceinline__ void accumulate_dz(float (&acc)[DZ_OWN], const float (*qs)[HEAD_DIM],
                                              const float (*gs)[HEAD_DIM],
                                              const float (*ps)[SJ], const float (*dss)[SJ],
                                              int width) {
    if (DZ_GROUPED) {
        int c0, d;
        dz_owned(0, c0, d);
        for (int r = 0; r < width; ++r) {
            const float qv = qs[r][d], gv = gs[r][d];
            float pr[DZ_OWN], dr[DZ_OWN];
            if (DZ_OWN % 4 == 0) {
#pragma unroll
                for (int u = 0; u < DZ_OWN; u += 4) {
                    const float4 p4 = *reinterpret_cast<const float4*>(&ps[r][c0 + u]);
                    const float4 d4 = *reinterpret_cast<const float4*>(&dss[r][c0 + u]);
                    pr[u] = p4.x; pr[u + 1] = p4.y; pr[u + 2] = p4.z; pr[u + 3] = p4.w;
                    dr[u] = d4.x; dr[u + 1] = d4.y; dr[u + 2] = d4.z; dr[u + 3] = d4.w;
                }
            } else {
#pragma unroll
                for (int u = 0; u < DZ_OWN; ++u) {
                    pr[u] = ps[r][c0 + u];
                    dr[u] = dss[r][c0 + u];
                }
            }
#pragma unroll
            for (int u = 0; u < DZ_OWN; ++u) acc[u] += dr[u] * qv + pr[u] * gv;
        }
        return;
    }
#pragma unroll
    for (int u = 0; u < DZ_OWN; ++u) {
        int c, d;
        if (dz_owned(u, c, d)) {
            float a = acc[u];
            for (int r = 0; r < width; ++r) a += dss[r][c] * qs[r][d] + ps[r][c] * gs[r][d];
            acc[u] = a;
        }
    }
}

extern "C" __global__ void __launch_bounds__(DZ_THREADS)
router_bwd_dz(const tok_t* __restrict__ q, const float* __restrict__ z,
              const unsigned char* __restrict__ route, const float* __restrict__ lse,
              const int* __restrict__ kept, const tok_t* __restrict__ dout,
              const float* __restrict__ dsum, float* __restrict__ dz, int heads, int len,
              int m, int topk, int token_major) {
    __shared__ float zs[SJ][HEAD_DIM + 1];  // padded: a warp reads 16 rows at once
    __shared__ float qs[ST][HEAD_DIM];
    __shared__ float gs[ST][HEAD_DIM];
    __shared__ __align__(16) float ps[ST][SJ];
    __shared__ __align__(16) float dss[ST][SJ];
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
    float acc[DZ_OWN];
#pragma unroll
    for (int u = 0; u < DZ_OWN; ++u) acc[u] = 0.0f;
    for (int t0 = 0; t0 < len; t0 += ST) {
        const int width = min(ST, len - t0);
        __syncthreads();  // the previous tile's reads are done
        stage_token_rows(qs, gs, q, dout, bh, t0, width, heads, len, token_major);
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
        accumulate_dz(acc, qs, gs, ps, dss, width);
    }
#pragma unroll
    for (int u = 0; u < DZ_OWN; ++u) {
        int c, d;
        if (dz_owned(u, c, d) && j0 + c < m) dz[((size_t)bh * m + j0 + c) * HEAD_DIM + d] = acc[u];
    }
}

// With top-k: dz_j = sum over the (token, slot) entries that kept set j of
// kept_ds * q_t + kept_p * dout_t, O(topk) per token instead of a pass over every token
// per set. The entries are first bucketed by (bh, set) with a stable counting sort in
// three steps, each linear in the entries:
//   router_dz_bucket (count): each warp takes a chunk of BUCKET_TOKENS tokens; each
//     set's count in the chunk goes to counts[(bh * m + j) * chunks + chunk] (zeroed
//     before: a (set, chunk) with no entry keeps its 0);
//   an inclusive scan of `counts` in that order (libtorch's cumsum): `scanned`; the run
//     of (bh, j) in the sorted order is then scanned[key * chunks - 1] ..
//     scanned[key * chunks + chunks - 1], chunk by chunk in token order;
//   router_dz_bucket (place): each entry goes to its chunk's start in the run plus the
//     number of equal sets before it in the chunk, so the runs list entries in token
//     order (stable), and the same inputs give the same order (no atomics).
// A libtorch stable sort of 64-bit keys with a binary search for the runs took ~0.25 ms
// and a dozen launches at B*H*L = 262144 rows.
#define BUCKET_TOKENS 32
#define BUCKET_STEP (32 / TOPK_MAX)  // tokens per warp step: one kept slot per lane
#if 32 % TOPK_MAX != 0
#error "a warp step holds whole kept lists"
#endif

// Warp w of the block takes chunk blockIdx.x * warps + w of sequence-head blockIdx.y, 4
// tokens (32 kept slots) per step; its running count of each set is its own row of m
// ints in shared memory (`tally`, warps * m ints of dynamic shared memory). Per step,
// the lanes holding the same set find each other (match_any): the lowest of them reads
// the set's count so far, and lane ranks among them follow in lane (= token, slot)
// order; that lane then adds them all. `place` 0 writes each set's chunk count to
// `counts`; 1 writes each entry's index to `order` at its place in the set's run.
extern "C" __global__ void __launch_bounds__(256)
router_dz_bucket(const int* __restrict__ kept, int* __restrict__ counts,
                 const int* __restrict__ scanned, int* __restrict__ order, int len, int m,
                 int chunks, int place) {
    extern __shared__ int tally[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int chunk = blockIdx.x * (blockDim.x / 32) + warp;
    const int bh = blockIdx.y;
    if (chunk >= chunks) return;  // whole warps; no block barrier below
    int* mine = tally + warp * m;
    for (int k = lane; k < m; k += 32) mine[k] = 0;
    __syncwarp();
    const unsigned below = (1u << lane) - 1u;
    for (int step = 0; step < BUCKET_TOKENS / BUCKET_STEP; ++step) {
        const int t = chunk * BUCKET_TOKENS + step * BUCKET_STEP + lane / TOPK_MAX;
        const size_t entry = ((size_t)bh * len + t) * TOPK_MAX + lane % TOPK_MAX;
        const int key = t < len ? kept[entry] : -1;
        const unsigned peers = __match_any_sync(0xffffffffu, key);
        const int leader = __ffs(peers) - 1;
        // One leader per distinct set: the leaders touch distinct counters.
        int base = (key >= 0 && lane == leader) ? mine[key] : 0;
        base = __shfl_sync(0xffffffffu, base, leader);
        if (key >= 0) {
            if (lane == leader) mine[key] = base + __popc(peers);
            if (place) {
                const size_t cell = ((size_t)bh * m + key) * chunks + chunk;
                const int start = cell == 0 ? 0 : scanned[cell - 1];
                order[start + base + __popc(peers & below)] = (int)entry;
            }
        }
        __syncwarp();
    }
    if (place) return;
    for (int k = lane; k < m; k += 32) {
        const int n = mine[k];
        if (n > 0) counts[((size_t)bh * m + k) * chunks + chunk] = n;
    }
}

// The bucketed entries' sum. One block per (set, bh) of 256 threads in groups of
// DZ_ENTRY_LANES lanes; a group takes one entry at a time (entries g, g + G, ... of the
// set's run, G = DZ_GROUPS in flight: a single walker waited on each entry's rows), each
// lane DZ_VEC consecutive dims of its q and dout rows in one 16-byte load when `aligned`
// (element loads otherwise: the same values, the same sums). The G partial rows are then
// added in group order. A fixed order, no atomics: the same bits every run. `chunks` is
// the bucketing's chunk count.
#define DZ_VEC (HEAD_DIM % (16 / TOK_BYTES) == 0 ? 16 / TOK_BYTES : 1)
#define DZ_ENTRY_LANES (HEAD_DIM / DZ_VEC)
#define DZ_GROUPS (256 / DZ_ENTRY_LANES > 0 ? 256 / DZ_ENTRY_LANES : 1)

extern "C" __global__ void __launch_bounds__(DZ_GROUPS * DZ_ENTRY_LANES)
router_bwd_dz_sparse(const tok_t* __restrict__ q, const tok_t* __restrict__ dout,
                     const float* __restrict__ kept_p, const float* __restrict__ kept_ds,
                     const int* __restrict__ order, const int* __restrict__ scanned,
                     float* __restrict__ dz, int heads, int len, int m, int chunks,
                     int token_major, int aligned) {
    __shared__ float partial[DZ_GROUPS][HEAD_DIM];
    const int j = blockIdx.x, bh = blockIdx.y;
    const int g = threadIdx.x / DZ_ENTRY_LANES, d0 = (threadIdx.x % DZ_ENTRY_LANES) * DZ_VEC;
    const size_t key = (size_t)bh * m + j;
    const size_t cell = key * chunks;
    const int first = cell == 0 ? 0 : scanned[cell - 1], last = scanned[cell + chunks - 1];
    float acc[DZ_VEC];
#pragma unroll
    for (int i = 0; i < DZ_VEC; ++i) acc[i] = 0.0f;
    for (int e = first + g; e < last; e += DZ_GROUPS) {
        const int entry = order[e];
        const int t = entry / TOPK_MAX - bh * len;  // entries of key (bh, j)
        const size_t row = tok_row(bh, t, heads, len, token_major);
        const float ds = kept_ds[entry], p = kept_p[entry];
        float qv[DZ_VEC], gv[DZ_VEC];
        load_run(q, row + d0, DZ_VEC > 1 && aligned, qv);
        load_run(dout, row + d0, DZ_VEC > 1 && aligned, gv);
#pragma unroll
        for (int i = 0; i < DZ_VEC; ++i) acc[i] += ds * qv[i] + p * gv[i];
    }
#pragma unroll
    for (int i = 0; i < DZ_VEC; ++i) partial[g][d0 + i] = acc[i];
    __syncthreads();
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x) {
        float sum = 0.0f;
        for (int r = 0; r < DZ_GROUPS; ++r) sum += partial[r][d];
        dz[key * HEAD_DIM + d] = sum;
    }
}

// With top-k and few sets per sequence: dz of a tile of SJ sets as router_bwd_dz computes
// it, but P and dS of each (token, kept set) come from the lists router_bwd_dq_topk wrote
// (kept, kept_p, kept_ds): no logits recomputed, no route read, and a token tile none of
// whose tokens kept a set of this tile is skipped before its rows are staged. A token's
// kept sets are distinct, so each (token, set) cell is written by at most one thread.
// Grid z splits the tokens into chunks of `chunk` (a multiple of ST): block z writes its
// chunk's sums to dz + z * (B * H * M * D), which sum_chunks then adds in chunk order
// (one chunk: dz itself). Without the split a block walked every token of its sequence:
// a few hundred blocks, each a long serial loop.
// The dense tiles of P and dS for tokens t0 .. t0 + width and sets j0 .. j0 + SJ from
// the kept lists (zero where a token did not keep a set), after a barrier that ends the
// previous tile's reads; returns (uniformly) whether any entry fell in the tile. `Tile`
// holds them as its kernel reads them: `zero()` clears the tile (the block's threads
// together), `put(r, c, p, ds)` writes token r's entry for set c.
template <class Tile>
__device__ __forceinline__ bool scatter_kept_tile(Tile& tile, const int* __restrict__ kept,
                                                  const float* __restrict__ kept_p,
                                                  const float* __restrict__ kept_ds, int bh,
                                                  int len, int t0, int width, int j0,
                                                  int topk) {
    __syncthreads();  // the previous tile's reads are done
    tile.zero();
    __syncthreads();
    bool found = false;
    for (int e = threadIdx.x; e < ST * TOPK_MAX; e += DZ_THREADS) {
        const int r = e / TOPK_MAX, s = e % TOPK_MAX;
        if (r >= width || s >= topk) continue;
        const size_t slot = ((size_t)bh * len + t0 + r) * TOPK_MAX + s;
        const int j = kept[slot];
        if (j >= j0 && j < j0 + SJ) {
            tile.put(r, j - j0, kept_p[slot], kept_ds[slot]);
            found = true;
        }
    }
    return __syncthreads_or(found);
}

// fp32 [ST, SJ] tiles, token-major, for the CUDA-core sums (accumulate_dz).
struct FloatTiles {
    float (*ps)[SJ];
    float (*dss)[SJ];
    __device__ void zero() {
        for (int e = threadIdx.x; e < ST * SJ; e += DZ_THREADS) {
            ps[e / SJ][e % SJ] = 0.0f;
            dss[e / SJ][e % SJ] = 0.0f;
        }
    }
    __device__ void put(int r, int c, float p, float ds) {
        ps[r][c] = p;
        dss[r][c] = ds;
    }
};

extern "C" __global__ void __launch_bounds__(DZ_THREADS)
router_bwd_dz_kept(const tok_t* __restrict__ q, const tok_t* __restrict__ dout,
                   const int* __restrict__ kept, const float* __restrict__ kept_p,
                   const float* __restrict__ kept_ds, float* __restrict__ dz, int heads,
                   int len, int m, int topk, int token_major, int chunk) {
    __shared__ float qs[ST][HEAD_DIM];
    __shared__ float gs[ST][HEAD_DIM];
    __shared__ __align__(16) float ps[ST][SJ];
    __shared__ __align__(16) float dss[ST][SJ];
    const int bh = blockIdx.y;
    const int j0 = blockIdx.x * SJ;
    float acc[DZ_OWN];
#pragma unroll
    for (int u = 0; u < DZ_OWN; ++u) acc[u] = 0.0f;
    FloatTiles tiles{ps, dss};
    const int t_end = min(len, (int)(blockIdx.z + 1) * chunk);
    for (int t0 = blockIdx.z * chunk; t0 < t_end; t0 += ST) {
        const int width = min(ST, t_end - t0);
        if (!scatter_kept_tile(tiles, kept, kept_p, kept_ds, bh, len, t0, width, j0, topk))
            continue;
        stage_token_rows(qs, gs, q, dout, bh, t0, width, heads, len, token_major);
        __syncthreads();
        accumulate_dz(acc, qs, gs, ps, dss, width);
    }
    float* dzc = dz + (size_t)blockIdx.z * gridDim.y * m * HEAD_DIM;
#pragma unroll
    for (int u = 0; u < DZ_OWN; ++u) {
        int c, d;
        if (dz_owned(u, c, d) && j0 + c < m) dzc[((size_t)bh * m + j0 + c) * HEAD_DIM + d] = acc[u];
    }
}

// router_bwd_dz_kept on tensor cores, for bf16 token rows (a bf16 step) with HEAD_DIM a
// multiple of 16 on sm_80+: per tile of 16 sets and ST tokens the sums
//   dz[j, d] += sum_t P[t, j] dout[t, d] + dS[t, j] q[t, d]
// are m16n8k16 MMAs (sets x tokens times tokens x dims), P and dS each split into two
// bf16 halves (hi = bf16(v), lo = bf16(v - hi): about 16 bits of the fp32 value; the
// products with the bf16 rows are exact and summed in fp32; SplitTiles below), so four
// MMAs per k-step and 8 dims. Warp w takes the 8-dim column tiles w, w + 8. The same grid, chunks and partials
// as router_bwd_dz_kept (the host picks one); the same fixed order on every run.
#if HEAD_DIM % 16 == 0 && TOKEN_BF16 && __CUDA_ARCH__ >= 800
#define DZ_NT (HEAD_DIM / 8)
#define DZ_NT_PER_WARP ((DZ_NT + 7) / 8)

__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned int (&a)[4],
                                         unsigned int b0, unsigned int b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Rows k and k + 1 of column n of a bf16 [ST][HEAD_DIM + 8] tile as one B-fragment register.
__device__ __forceinline__ unsigned int col_pair(const unsigned short (*t)[HEAD_DIM + 8],
                                                 int k, int n) {
    return (unsigned int)t[k][n] | ((unsigned int)t[k + 1][n] << 16);
}

// P and dS split into bf16 halves (hi = bf16(v), lo = bf16(v - hi)) once per tile by the
// scatter, set-major ([SJ][ST + 8]: two consecutive tokens of a set are one 32-bit A
// fragment register; the row stride of 20 words puts a warp's 8 sets x 4 token pairs on
// 32 distinct banks). Each of the block's 8 warps used to split the same fp32 tiles
// itself: eight times the conversions (most of the kernel's 60 M instructions at L =
// 1024) and 4-way bank conflicts on the fp32 reads. Unkept cells stay 0 (both halves),
// as the split of 0 is.
#define DZ_SPLIT_STRIDE (ST + 8)
struct SplitTiles {
    unsigned short (*p_hi)[DZ_SPLIT_STRIDE];
    unsigned short (*p_lo)[DZ_SPLIT_STRIDE];
    unsigned short (*d_hi)[DZ_SPLIT_STRIDE];
    unsigned short (*d_lo)[DZ_SPLIT_STRIDE];
    __device__ void zero() {
        for (int e = threadIdx.x; e < SJ * DZ_SPLIT_STRIDE / 2; e += DZ_THREADS) {
            const int c = e / (DZ_SPLIT_STRIDE / 2), w = (e % (DZ_SPLIT_STRIDE / 2)) * 2;
            *reinterpret_cast<unsigned int*>(&p_hi[c][w]) = 0u;
            *reinterpret_cast<unsigned int*>(&p_lo[c][w]) = 0u;
            *reinterpret_cast<unsigned int*>(&d_hi[c][w]) = 0u;
            *reinterpret_cast<unsigned int*>(&d_lo[c][w]) = 0u;
        }
    }
    __device__ void put(int r, int c, float p, float ds) {
        const unsigned short ph = to_bf16(p), dh = to_bf16(ds);
        p_hi[c][r] = ph;
        p_lo[c][r] = to_bf16(p - __uint_as_float((unsigned int)ph << 16));
        d_hi[c][r] = dh;
        d_lo[c][r] = to_bf16(ds - __uint_as_float((unsigned int)dh << 16));
    }
};

// Set `set`'s tokens k and k + 1 (k even) of a split tile as one A-fragment register.
__device__ __forceinline__ unsigned int set_pair(const unsigned short (*t)[DZ_SPLIT_STRIDE],
                                                 int set, int k) {
    return *reinterpret_cast<const unsigned int*>(&t[set][k]);
}

extern "C" __global__ void __launch_bounds__(DZ_THREADS)
router_bwd_dz_kept_mma(const tok_t* __restrict__ q, const tok_t* __restrict__ dout,
                       const int* __restrict__ kept, const float* __restrict__ kept_p,
                       const float* __restrict__ kept_ds, float* __restrict__ dz, int heads,
                       int len, int m, int topk, int token_major, int chunk) {
    __shared__ __align__(16) unsigned short qs[ST][HEAD_DIM + 8];
    __shared__ __align__(16) unsigned short gs[ST][HEAD_DIM + 8];
    __shared__ __align__(16) unsigned short p_hi[SJ][DZ_SPLIT_STRIDE];
    __shared__ __align__(16) unsigned short p_lo[SJ][DZ_SPLIT_STRIDE];
    __shared__ __align__(16) unsigned short d_hi[SJ][DZ_SPLIT_STRIDE];
    __shared__ __align__(16) unsigned short d_lo[SJ][DZ_SPLIT_STRIDE];
    SplitTiles tiles{p_hi, p_lo, d_hi, d_lo};
    const int bh = blockIdx.y;
    const int j0 = blockIdx.x * SJ;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, tig = lane & 3;
    float acc[DZ_NT_PER_WARP][4];
#pragma unroll
    for (int w = 0; w < DZ_NT_PER_WARP; ++w)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[w][i] = 0.0f;
    const int t_end = min(len, (int)(blockIdx.z + 1) * chunk);
    for (int t0 = blockIdx.z * chunk; t0 < t_end; t0 += ST) {
        const int width = min(ST, t_end - t0);
        if (!scatter_kept_tile(tiles, kept, kept_p, kept_ds, bh, len, t0, width, j0, topk))
            continue;
        // The tile's q and dout rows as they are (bf16), two dims per 32-bit copy; zero
        // rows past the chunk's tokens.
        for (int e = tid; e < ST * HEAD_DIM / 2; e += DZ_THREADS) {
            const int r = e / (HEAD_DIM / 2), c = (e % (HEAD_DIM / 2)) * 2;
            unsigned int qv = 0u, gv = 0u;
            if (r < width) {
                const size_t row = tok_row(bh, t0 + r, heads, len, token_major);
                qv = *reinterpret_cast<const unsigned int*>(q + row + c);
                gv = *reinterpret_cast<const unsigned int*>(dout + row + c);
            }
            *reinterpret_cast<unsigned int*>(&qs[r][c]) = qv;
            *reinterpret_cast<unsigned int*>(&gs[r][c]) = gv;
        }
        __syncthreads();
#pragma unroll
        for (int k0 = 0; k0 < ST; k0 += 16) {
            // A fragments (rows: the tile's sets g, g + 8; columns: tokens k0 + 2 tig (+1)
            // and + 8) of P and dS, already split into bf16 halves by the scatter.
            unsigned int ah_p[4], al_p[4], ah_d[4], al_d[4];
            const int ka = k0 + tig * 2;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int set = g + (i & 1) * 8, k = ka + (i >> 1) * 8;
                ah_p[i] = set_pair(p_hi, set, k);
                al_p[i] = set_pair(p_lo, set, k);
                ah_d[i] = set_pair(d_hi, set, k);
                al_d[i] = set_pair(d_lo, set, k);
            }
#pragma unroll
            for (int w = 0; w < DZ_NT_PER_WARP; ++w) {
                const int nt = warp + 8 * w;
                if (nt >= DZ_NT) continue;  // uniform across the warp
                const int n = nt * 8 + g;
                const unsigned int g0 = col_pair(gs, ka, n), g1 = col_pair(gs, ka + 8, n);
                const unsigned int q0 = col_pair(qs, ka, n), q1 = col_pair(qs, ka + 8, n);
                mma_bf16(acc[w], ah_p, g0, g1);
                mma_bf16(acc[w], al_p, g0, g1);
                mma_bf16(acc[w], ah_d, q0, q1);
                mma_bf16(acc[w], al_d, q0, q1);
            }
        }
    }
    float* dzc = dz + (size_t)blockIdx.z * gridDim.y * m * HEAD_DIM;
#pragma unroll
    for (int w = 0; w < DZ_NT_PER_WARP; ++w) {
        const int nt = warp + 8 * w;
        if (nt >= DZ_NT) continue;
        const int d = nt * 8 + tig * 2;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int j = j0 + g + half * 8;
            if (j < m) {
                float* row = dzc + ((size_t)bh * m + j) * HEAD_DIM + d;
                row[0] = acc[w][half * 2];
                row[1] = acc[w][half * 2 + 1];
            }
        }
    }
}
#endif

// out[e] = sum over c of partial[c * n + e], c in order (deterministic).
extern "C" __global__ void sum_chunks(const float* __restrict__ partial, float* __restrict__ out,
                                      long long n, int chunks) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    float a = 0.0f;
    for (int c = 0; c < chunks; ++c) a += partial[(size_t)c * n + e];
    out[e] = a;
}
