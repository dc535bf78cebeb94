// LayerNorm over the last dimension of an fp32 residual stream, writing the normalized
// rows straight in the matmuls' half-precision kind: y = ((x - mean) * rstd) * w + b as
// bf16 (OUT_BF16=1) or fp16 (OUT_BF16=0). libtorch's layer_norm writes fp32 and a cast
// kernel then rewrites it as bf16: this reads x once and writes y once. The reference is
// `LayerNormCast`'s tensor ops (kernels/src/layer_norm.rs); tests in tests_cuda.rs.
//
// Layout (row-major): x [N, C] fp32, w, b [C] fp32, y [N, C] half, mean, rstd [N] fp32.
// C is fixed at compile time (NVRTC option -DLN_C=.., at most 1024), so a row lives in the
// registers of one warp: lane l holds columns l, l + 32, l + 64, ...
//
// Backward, with xhat = (x - mean) * rstd and g = dy * w:
//   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))      (fp32, per row)
//   dw = sum_rows dy * xhat,  db = sum_rows dy
// dw and db are summed without atomics: each block adds its rows in a fixed order into a
// row of partials, and ln_bwd_reduce adds the partials of every column in block order, so
// the gradients are the same bits on every run.

#ifndef LN_C
#error "compile with -DLN_C=<normalized size>"
#endif
#ifndef OUT_BF16
#error "compile with -DOUT_BF16=1 (bf16 output) or 0 (fp16)"
#endif
#define LN_PER ((LN_C + 31) / 32)
#define LN_WARPS 8
#if LN_C > 1024
#error "LN_C is at most 1024 (registers and the 32 KiB of shared partial sums)"
#endif

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Round to nearest even, as libtorch's casts do (the PTX conversion; sm_80 and later for
// bf16).
__device__ __forceinline__ unsigned short to_half_bits(float v) {
    unsigned short h;
#if OUT_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
#endif
    return h;
}

__device__ __forceinline__ float from_half_bits(unsigned short h) {
#if OUT_BF16
    return __uint_as_float(((unsigned int)h) << 16);
#else
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
#endif
}

// One warp per row. Grid: x over blocks of LN_WARPS rows.
extern "C" __global__ void __launch_bounds__(LN_WARPS * 32)
ln_fwd(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
       unsigned short* __restrict__ y, float* __restrict__ mean_out,
       float* __restrict__ rstd_out, long long rows, float eps) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;  // uniform across the warp
    const float* xr = x + row * LN_C;
    float v[LN_PER];
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < LN_PER; ++u) {
        const int c = lane + 32 * u;
        v[u] = c < LN_C ? xr[c] : 0.0f;
        sum += v[u];
    }
    const float mean = warp_sum(sum) / (float)LN_C;
    float sq = 0.0f;
#pragma unroll
    for (int u = 0; u < LN_PER; ++u) {
        const int c = lane + 32 * u;
        const float dv = c < LN_C ? v[u] - mean : 0.0f;
        sq += dv * dv;
    }
    const float rstd = rsqrtf(warp_sum(sq) / (float)LN_C + eps);
    unsigned short* yr = y + row * LN_C;
#pragma unroll
    for (int u = 0; u < LN_PER; ++u) {
        const int c = lane + 32 * u;
        if (c < LN_C) yr[c] = to_half_bits((v[u] - mean) * rstd * w[c] + b[c]);
    }
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

// dx per row (one warp each), and this block's partial dw / db over its rows: rows
// blockIdx.x * rows_per_block .. + rows_per_block, warp k taking every LN_WARPS-th of
// them, the warps' sums then added in warp order. partial: [gridDim.x, 2, LN_C].
extern "C" __global__ void __launch_bounds__(LN_WARPS * 32)
ln_bwd(const float* __restrict__ x, const float* __restrict__ w,
       const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
       const unsigned short* __restrict__ dy, float* __restrict__ dx,
       float* __restrict__ partial, long long rows, int rows_per_block) {
    __shared__ float acc[LN_WARPS][LN_C];  // the warps' dw sums, then their db sums
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float pw[LN_PER], pb[LN_PER], wv[LN_PER];
#pragma unroll
    for (int u = 0; u < LN_PER; ++u) {
        const int c = lane + 32 * u;
        pw[u] = 0.0f;
        pb[u] = 0.0f;
        wv[u] = c < LN_C ? w[c] : 0.0f;
    }
    const long long first = (long long)blockIdx.x * rows_per_block;
    const long long last = min(first + rows_per_block, rows);
    for (long long row = first + warp; row < last; row += LN_WARPS) {
        const float mean = mean_in[row], rstd = rstd_in[row];
        const float* xr = x + row * LN_C;
        const unsigned short* dyr = dy + row * LN_C;
        float xh[LN_PER], g[LN_PER];
        float sg = 0.0f, sgx = 0.0f;
#pragma unroll
        for (int u = 0; u < LN_PER; ++u) {
            const int c = lane + 32 * u;
            const bool in = c < LN_C;
            const float d = in ? from_half_bits(dyr[c]) : 0.0f;
            xh[u] = in ? (xr[c] - mean) * rstd : 0.0f;
            g[u] = d * wv[u];
            sg += g[u];
            sgx += g[u] * xh[u];
            pw[u] += d * xh[u];
            pb[u] += d;
        }
        const float mg = warp_sum(sg) / (float)LN_C;
        const float mgx = warp_sum(sgx) / (float)LN_C;
        float* dxr = dx + row * LN_C;
#pragma unroll
        for (int u = 0; u < LN_PER; ++u) {
            const int c = lane + 32 * u;
            if (c < LN_C) dxr[c] = rstd * (g[u] - mg - xh[u] * mgx);
        }
    }
    float* out = partial + (size_t)blockIdx.x * 2 * LN_C;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int u = 0; u < LN_PER; ++u) {
            const int c = lane + 32 * u;
            if (c < LN_C) acc[warp][c] = half == 0 ? pw[u] : pb[u];
        }
        __syncthreads();
        for (int c = threadIdx.x; c < LN_C; c += LN_WARPS * 32) {
            float sum = 0.0f;
            for (int k = 0; k < LN_WARPS; ++k) sum += acc[k][c];
            out[half * LN_C + c] = sum;
        }
        __syncthreads();
    }
}

// dw, db [C] each: the partials of every block added in block order, one thread per
// column (of 2 * LN_C: dw's then db's).
extern "C" __global__ void ln_bwd_reduce(const float* __restrict__ partial,
                                         float* __restrict__ dwb, int blocks) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= 2 * LN_C) return;
    float s = 0.0f;
    for (int k = 0; k < blocks; ++k) s += partial[(size_t)k * 2 * LN_C + c];
    dwb[c] = s;
}
