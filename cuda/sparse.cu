// Expanding compressed weights into a dense [rows, cols] buffer (the workspace).
// mode 0 (overwrite): out = kept ? v : 0;   mode 1 (add kept): out = kept ? out + v : 0,
// with the sum in f32 rounded to T, like the CPU reference;   mode 2 (mask): out = kept ? out : 0;
// mode 3 (gather, the inverse): v = out at every kept position, `out` left unchanged (the
// gradient of the kept values of a trained sparse weight, from a dense gradient).
//
// bitmask_expand: values [nnz] row by row, mask [rows, stride = ceil(cols/8)] (bit c%8 of
// byte c/8), row_offsets [rows + 1]. One block per row: the rank of a kept column is
// row_offsets[row] + (kept bits in the row's earlier bytes) + (kept bits below it in its
// byte); the per-byte prefix counts are built in shared memory (stride ≤ MAX_STRIDE; the
// threads' runs of bytes ranked by a warp-shuffle block scan), then threads walk the columns
// with a stride of blockDim.x (coalesced writes). Mode 2 needs no ranks: a thread per mask
// byte zeroes its pruned columns, 8 elements moved as one vector where aligned.
//
// nm_expand: values [rows, cols/m·n], positions [rows, index_stride], ceil(log2 m) bits per
// kept value. One thread per output element reads its group's n positions.
//
// nonzero_mask: the bitmask [rows, stride] of the non-zero entries of dense [rows, cols]
// (bit c%8 of byte c/8 set where dense[row, c] != 0, so -0 is a zero and NaN is kept; bits
// past cols 0), one thread per mask byte: a pruned weight's mask built where the weight is.
#include "common.cuh"

#define MAX_STRIDE 8192

template <typename T>
__device__ __forceinline__ T put(T old, T v, int mode) {
    return mode == 0 ? v : mode == 1 ? from_f32<T>(to_f32(old) + to_f32(v)) : old;
}

// One kept position: mode 3 copies the dense entry into its value slot, the others write out.
template <typename T>
__device__ __forceinline__ void kept(T* values, size_t slot, T* o, int mode) {
    if (mode == 3) values[slot] = *o;
    else *o = put(*o, values[slot], mode);
}

// Mode 2 needs no ranks: each thread takes a mask byte (8 columns) and zeroes the pruned
// ones, the 8 elements moved as one 16-byte vector (bf16) where cols % 8 == 0 and out is
// 16-byte aligned.
template <typename T>
__device__ void bitmask_mask_only(const uint8_t* mrow, T* orow, int cols, int stride, bool vec) {
    for (int j = threadIdx.x; j < stride; j += blockDim.x) {
        const unsigned byte = mrow[j];
        const int c0 = 8 * j, count = min(8, cols - c0);
        T* o = orow + c0;
        if (vec && count == 8) {
            Pack8<T> p = *reinterpret_cast<const Pack8<T>*>(o);
#pragma unroll
            for (int e = 0; e < 8; ++e)
                if (!((byte >> e) & 1u)) p.v[e] = from_f32<T>(0.f);
            *reinterpret_cast<Pack8<T>*>(o) = p;
        } else {
            for (int e = 0; e < count; ++e)
                if (!((byte >> e) & 1u)) o[e] = from_f32<T>(0.f);
        }
    }
}

// The exclusive prefix sum over the block of each thread's v (blockDim.x a multiple of 32, at
// most 1024): warp shuffles, then the warps' totals through `totals` (32 entries).
__device__ __forceinline__ unsigned block_exclusive_scan(unsigned v, unsigned* totals) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    unsigned incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
    }
    __syncthreads();  // totals may still be read by a previous call
    if (lane == 31) totals[warp] = incl;
    __syncthreads();
    unsigned before = 0;
    for (int w = 0; w < warp && w < nwarps; ++w) before += totals[w];
    return before + incl - v;
}

template <typename T>
__device__ void bitmask_expand(T* values, const uint8_t* mask, const unsigned* row_offsets, T* out,
                               int rows, int cols, int stride, int mode) {
    __shared__ unsigned prefix[MAX_STRIDE];
    __shared__ unsigned totals[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const uint8_t* mrow = mask + (size_t)row * stride;
    if (mode == 2) {
        bitmask_mask_only(mrow, out + (size_t)row * cols, cols, stride, cols % 8 == 0 && aligned16(out));
        return;
    }
    // Each thread counts a contiguous run of bytes; a block-wide scan gives its first rank.
    const int per = (stride + blockDim.x - 1) / blockDim.x;
    const int b0 = threadIdx.x * per, b1 = min(stride, b0 + per);
    unsigned local = 0;
    for (int b = b0; b < b1; ++b) local += __popc((unsigned)mrow[b]);
    unsigned run = block_exclusive_scan(local, totals);
    for (int b = b0; b < b1; ++b) {
        prefix[b] = run;
        run += __popc((unsigned)mrow[b]);
    }
    __syncthreads();
    const unsigned base = row_offsets[row];
    T* orow = out + (size_t)row * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const unsigned byte = mrow[c >> 3];
        const int bit = c & 7;
        if ((byte >> bit) & 1) {
            const unsigned rank = prefix[c >> 3] + __popc(byte & ((1u << bit) - 1u));
            kept(values, base + rank, &orow[c], mode);
        } else if (mode != 3) {
            orow[c] = from_f32<T>(0.f);
        }
    }
}

// Grid: (rows, ceil(cols / blockDim.x)).
template <typename T>
__device__ void nm_expand(T* values, const uint8_t* positions, T* out, int rows, int cols, int index_stride,
                          int n, int m, int bits, int mode) {
    const int row = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= rows || c >= cols) return;
    const int g = c / m, p = c % m, per_row = cols / m * n;
    const uint8_t* prow = positions + (size_t)row * index_stride;
    int slot = -1;
    for (int i = 0; i < n; ++i) {
        const int s = g * n + i;
        int pos = 0;
        for (int b = 0; b < bits; ++b) {
            const int at = s * bits + b;
            pos |= ((prow[at >> 3] >> (at & 7)) & 1) << b;
        }
        if (pos == p) slot = s;
    }
    T* o = out + (size_t)row * cols + c;
    if (slot >= 0) kept(values, (size_t)row * per_row + slot, o, mode);
    else if (mode != 3) *o = from_f32<T>(0.f);
}

template <typename T>
__device__ void nonzero_mask(const T* dense, uint8_t* mask, int rows, int cols, int stride) {
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * stride) return;
    const size_t row = i / stride;
    const int first = (int)(i % stride) * 8;
    unsigned bits = 0;
    for (int e = 0; e < 8 && first + e < cols; ++e)
        if (to_f32(dense[row * cols + first + e]) != 0.f) bits |= 1u << e;
    mask[i] = (uint8_t)bits;
}

#define SPARSE_KERNELS(T, S)                                                                              \
    extern "C" __global__ void bitmask_expand_##S(T* values, const uint8_t* mask,                  \
                                                  const unsigned* row_offsets, T* out, int rows, int cols, \
                                                  int stride, int mode) {                                \
        bitmask_expand<T>(values, mask, row_offsets, out, rows, cols, stride, mode);                      \
    }                                                                                                     \
    extern "C" __global__ void nm_expand_##S(T* values, const uint8_t* positions, T* out, int rows,  \
                                             int cols, int index_stride, int n, int m, int bits,          \
                                             int mode) {                                                   \
        nm_expand<T>(values, positions, out, rows, cols, index_stride, n, m, bits, mode);                  \
    }                                                                                                     \
    extern "C" __global__ void nonzero_mask_##S(const T* dense, uint8_t* mask, int rows, int cols,          \
                                                int stride) {                                              \
        nonzero_mask<T>(dense, mask, rows, cols, stride);                                                  \
    }

SPARSE_KERNELS(float, f32)
SPARSE_KERNELS(bf16, bf16)
