// Set distance Delta between every query set i and key set j of one sequence: the
// CUDA side of `SetLayout::new` (MinHash) and `exact::exact_delta` (bitsets), which are
// the references these kernels are tested against (kernels/src/tests_cuda.rs).
//
// Layout (all row-major, one batch): B sequences of M padded set slots.
//   delta_minhash: signatures [B, M, k] u32, sizes [B, M] f32      -> delta [B, M, M] f32
//   bitset_fill:   values [N] i64 atom ids, slots [N] i64 (b*M + m) -> bits [B*M, W] u32
//   delta_exact:   bits [B, M, W] u32, sizes [B, M] f32            -> delta [B, M, M] f32
// Grid: x over key tiles, y over query tiles, z over sequences; blocks of TILE x TILE
// threads, one (i, j) pair per thread. Each block stages its TILE query rows and TILE
// key rows through shared memory CHUNK columns at a time, so every signature column is
// read from device memory once per tile instead of once per pair. Rows are padded by one
// word so the key reads (one row per thread of a warp) fall in distinct banks.

#define TILE 16
#define CHUNK 64

// MinHash: J = (columns equal) / k, inter = J / (1 + J) * (|A| + |B|),
// Delta = max(0, |A| + |B| - 2 inter); the same float operations, in the same order, as
// the tensor-op reference.
extern "C" __global__ void delta_minhash(const unsigned int* __restrict__ sig,
                                         const float* __restrict__ sizes,
                                         float* __restrict__ delta, int m, int k) {
    __shared__ unsigned int q_rows[TILE][CHUNK + 1];
    __shared__ unsigned int k_rows[TILE][CHUNK + 1];
    const int b = blockIdx.z;
    const int i0 = blockIdx.y * TILE, j0 = blockIdx.x * TILE;
    const int ty = threadIdx.y, tx = threadIdx.x;
    const unsigned int* base = sig + (size_t)b * m * k;
    int equal = 0;
    for (int c0 = 0; c0 < k; c0 += CHUNK) {
        const int width = min(CHUNK, k - c0);
        for (int e = ty * TILE + tx; e < TILE * CHUNK; e += TILE * TILE) {
            const int r = e / CHUNK, c = e % CHUNK;
            unsigned int qv = 0u, kv = 0u;  // never compared when out of range
            if (c < width) {
                if (i0 + r < m) qv = base[(size_t)(i0 + r) * k + c0 + c];
                if (j0 + r < m) kv = base[(size_t)(j0 + r) * k + c0 + c];
            }
            q_rows[r][c] = qv;
            k_rows[r][c] = kv;
        }
        __syncthreads();
        for (int c = 0; c < width; ++c) equal += (q_rows[ty][c] == k_rows[tx][c]);
        __syncthreads();
    }
    const int i = i0 + ty, j = j0 + tx;
    if (i < m && j < m) {
        const float jaccard = (float)equal / (float)max(k, 1);
        const float sum = sizes[b * m + i] + sizes[b * m + j];
        const float inter = jaccard / (jaccard + 1.0f) * sum;
        delta[((size_t)b * m + i) * m + j] = fmaxf(0.0f, sum - inter * 2.0f);
    }
}

// Sets bit `value` of row `slot` for every atom occurrence. OR is exact and order-free,
// so the atomics give the same bits on every run.
extern "C" __global__ void bitset_fill(const long long* __restrict__ values,
                                       const long long* __restrict__ slots,
                                       unsigned int* __restrict__ bits, long long n, int words) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const long long v = values[e];
    atomicOr(&bits[slots[e] * words + (v >> 5)], 1u << (v & 31));
}

// Exact: |A n B| = popcount(a & b) summed over words, Delta = |A| + |B| - 2 |A n B|
// (integers below 2^24, so exact in f32 as in the reference).
extern "C" __global__ void delta_exact(const unsigned int* __restrict__ bits,
                                       const float* __restrict__ sizes,
                                       float* __restrict__ delta, int m, int words) {
    __shared__ unsigned int q_rows[TILE][CHUNK + 1];
    __shared__ unsigned int k_rows[TILE][CHUNK + 1];
    const int b = blockIdx.z;
    const int i0 = blockIdx.y * TILE, j0 = blockIdx.x * TILE;
    const int ty = threadIdx.y, tx = threadIdx.x;
    const unsigned int* base = bits + (size_t)b * m * words;
    int inter = 0;
    for (int c0 = 0; c0 < words; c0 += CHUNK) {
        const int width = min(CHUNK, words - c0);
        for (int e = ty * TILE + tx; e < TILE * CHUNK; e += TILE * TILE) {
            const int r = e / CHUNK, c = e % CHUNK;
            unsigned int qv = 0u, kv = 0u;
            if (c < width) {
                if (i0 + r < m) qv = base[(size_t)(i0 + r) * words + c0 + c];
                if (j0 + r < m) kv = base[(size_t)(j0 + r) * words + c0 + c];
            }
            q_rows[r][c] = qv;
            k_rows[r][c] = kv;
        }
        __syncthreads();
        for (int c = 0; c < width; ++c) inter += __popc(q_rows[ty][c] & k_rows[tx][c]);
        __syncthreads();
    }
    const int i = i0 + ty, j = j0 + tx;
    if (i < m && j < m) {
        const float sum = sizes[b * m + i] + sizes[b * m + j];
        delta[((size_t)b * m + i) * m + j] = sum - 2.0f * (float)inter;
    }
}
