// Atom pooling, the CSR sum that feeds every SKA layer its set features:
//   out[s] = sum_{e in [offsets[s], offsets[s+1])} table[values[e]]      (pool_fwd)
// and its gradient with respect to the table,
//   dtable[u] = sum over the occurrences e of atom u of dout[slot(e)]    (pool_bwd)
// in a fixed order, without atomics: the same inputs give the same bits on every run.
// The reference is `pool_atoms` (embedding_bag, kernels/src/lib.rs) and the manual op of
// kernels/src/pool.rs; tests in kernels/src/tests_cuda.rs.
//
// Why by hand: libtorch's embedding_bag backward sorts the atom ids on every call (a
// radix sort and a handful of segment kernels, ~0.3 ms per forward + backward whatever
// the sequence length). The atoms of a batch do not change between its layers or its
// forward and backward, so the layout sorts them once per batch (`SetLayout::atom_slots`)
// and this backward is one gather pass over that order.
//
// Layout (row-major, fp32): table [V, dim], out and dout [S, dim] (S = B * M set slots).
// values [N] int64 atom ids, offsets [S + 1] int64 (the slot CSR), and for the backward
// the occurrences in (atom, occurrence) order: sorted_atoms [N] int32 (non-decreasing)
// and sorted_slots [N] int32 (the slot of each). An id outside [0, V) is skipped (never
// read or written out of bounds); ids are validated where batches are made.
//
// Grid: x over slots (forward) or occurrences (backward), y over chunks of POOL_THREADS
// columns of 4 floats (or single floats when dim % 4 != 0). A backward block whose
// occurrence is not the first of its atom's run exits at once; the first walks the run.
// Both sum in four interleaved partial sums (occurrence e into sum e % 4), added as
// (s0 + s1) + (s2 + s3): four independent loads in flight per thread, a fixed order.

#define POOL_THREADS 128

// Column chunk of this thread as 4 floats (vec) or 1.
struct Cols {
    int c;      // first column
    bool live;  // inside the row
};

__device__ __forceinline__ Cols thread_cols(int dim, bool vec) {
    const int per = vec ? 4 : 1;
    const int c = (blockIdx.y * POOL_THREADS + threadIdx.x) * per;
    return Cols{c, c < dim};
}

__device__ __forceinline__ float4 load4(const float* row, int c, bool vec) {
    if (vec) return *reinterpret_cast<const float4*>(row + c);
    return make_float4(row[c], 0.0f, 0.0f, 0.0f);
}

__device__ __forceinline__ void add4(float4& a, const float4& b) {
    a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
}

__device__ __forceinline__ float4 combine(float4 s0, float4 s1, float4 s2, float4 s3) {
    add4(s0, s1);
    add4(s2, s3);
    add4(s0, s2);
    return s0;
}

__device__ __forceinline__ void store4(float* row, int c, bool vec, float4 v) {
    if (vec) *reinterpret_cast<float4*>(row + c) = v;
    else row[c] = v.x;
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
pool_fwd(const float* __restrict__ table, const long long* __restrict__ values,
         const long long* __restrict__ offsets, float* __restrict__ out, int vocab, int dim,
         int vec) {
    const Cols col = thread_cols(dim, vec != 0);
    if (!col.live) return;
    const int s = blockIdx.x;
    const long long begin = offsets[s], end = offsets[s + 1];
    float4 acc[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) acc[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (long long e = begin; e < end; e += 4) {
        long long id[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) id[u] = e + u < end ? values[e + u] : -1;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if (id[u] >= 0 && id[u] < vocab)
                add4(acc[u], load4(table + (size_t)id[u] * dim, col.c, vec != 0));
        }
    }
    store4(out + (size_t)s * dim, col.c, vec != 0, combine(acc[0], acc[1], acc[2], acc[3]));
}

// dtable must be zero on entry (atoms that occur nowhere keep their zero rows).
extern "C" __global__ void __launch_bounds__(POOL_THREADS)
pool_bwd(const float* __restrict__ dout, const int* __restrict__ sorted_atoms,
         const int* __restrict__ sorted_slots, float* __restrict__ dtable, long long n,
         int vocab, int dim, int vec) {
    const long long head = blockIdx.x;
    const int atom = sorted_atoms[head];
    if (head > 0 && sorted_atoms[head - 1] == atom) return;  // not the run's first
    if (atom < 0 || atom >= vocab) return;
    const Cols col = thread_cols(dim, vec != 0);
    if (!col.live) return;
    float4 acc[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) acc[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // The run is contiguous (sorted by atom): once an entry of another atom is met, every
    // later one is too.
    for (long long e = head;; e += 4) {
        int slot[4];
        bool in[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            in[u] = e + u < n && sorted_atoms[e + u] == atom;
            slot[u] = in[u] ? sorted_slots[e + u] : 0;
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if (in[u]) add4(acc[u], load4(dout + (size_t)slot[u] * dim, col.c, vec != 0));
        }
        if (!in[3]) break;
    }
    store4(dtable + (size_t)atom * dim, col.c, vec != 0, combine(acc[0], acc[1], acc[2], acc[3]));
}
