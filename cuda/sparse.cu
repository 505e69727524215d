// Expanding compressed weights into a dense [rows, cols] buffer (the workspace).
// mode 0 (overwrite): out = kept ? v : 0;   mode 1 (add kept): out = kept ? out + v : 0,
// with the sum in f32 rounded to T, like the CPU reference;   mode 3 (gather, the inverse):
// v = out at every kept position, `out` left unchanged (the gradient of the kept values of a
// trained sparse weight, from a dense gradient). (Mode 2, masking, is mask_window's.)
//
// bitmask_expand: values [nnz] row by row, mask [rows, stride = ceil(cols/8)] (bit c%8 of
// byte c/8), row_offsets [rows + 1]. One block per row: the rank of a kept column is
// row_offsets[row] + (kept bits in the row's earlier bytes) + (kept bits below it in its
// byte); the per-byte prefix counts are built in shared memory (stride ≤ MAX_STRIDE; the
// threads' runs of bytes ranked by a warp-shuffle block scan), then threads walk the columns
// with a stride of blockDim.x (coalesced writes).
//
// nm_expand: values [rows, cols/m·n], positions [rows, index_stride], ceil(log2 m) bits per
// kept value. One thread per output element reads its group's n positions.
//
// mask_window: out [rows, width] (row stride width) holds columns col0 .. col0 + width - 1 of a
// [rows, cols] matrix (col0 % 8 == 0); its entries at pruned positions become 0, the kept ones
// stay (mode 2 over a column window: the whole matrix is col0 = 0, width = cols). meta is the
// bitmask [rows, stride] (n == 0) or the N:M positions [rows, stride] (bits per kept index).
// No ranks are needed: a thread per 8 columns builds their keep byte and zeroes the pruned
// ones, the 8 elements moved as one 16-byte vector (bf16; two for f32) where width % 8 == 0
// and out is 16-byte aligned. The tiles of the masked-LoRA adapter gradients use it.
//
// nonzero_mask: the bitmask [rows, stride] of the non-zero entries of dense [rows, cols]
// (bit c%8 of byte c/8 set where dense[row, c] != 0, so -0 is a zero and NaN is kept; bits
// past cols 0), one thread per mask byte: a pruned weight's mask built where the weight is.
#include "common.cuh"

#define MAX_STRIDE 8192

template <typename T>
__device__ __forceinline__ T put(T old, T v, int mode) {
    return mode == 0 ? v : from_f32<T>(to_f32(old) + to_f32(v));
}

// One kept position: mode 3 copies the dense entry into its value slot, the others write out.
template <typename T>
__device__ __forceinline__ void kept(T* values, size_t slot, T* o, int mode) {
    if (mode == 3) values[slot] = *o;
    else *o = put(*o, values[slot], mode);
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

// The value slot (within its row) of column c of an N:M row whose positions start at prow, or
// -1 where c is pruned: the n positions of c's group are read, `bits` bits each.
__device__ __forceinline__ int nm_slot(const uint8_t* prow, int c, int n, int m, int bits) {
    const int g = c / m, p = c % m;
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
    return slot;
}

// Grid: (rows, ceil(cols / blockDim.x)).
template <typename T>
__device__ void nm_expand(T* values, const uint8_t* positions, T* out, int rows, int cols, int index_stride,
                          int n, int m, int bits, int mode) {
    const int row = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= rows || c >= cols) return;
    const int per_row = cols / m * n;
    const int slot = nm_slot(positions + (size_t)row * index_stride, c, n, m, bits);
    T* o = out + (size_t)row * cols + c;
    if (slot >= 0) kept(values, (size_t)row * per_row + slot, o, mode);
    else if (mode != 3) *o = from_f32<T>(0.f);
}

// One thread per 8 columns of the window: rows · ceil(width / 8) threads.
template <typename T>
__device__ void mask_window(const uint8_t* meta, T* out, int rows, int stride, int col0, int width, int n, int m,
                            int bits) {
    const int per_row = (width + 7) / 8;
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * per_row) return;
    const size_t row = i / per_row;
    const int j = (int)(i % per_row), c = col0 + 8 * j, count = min(8, width - 8 * j);
    const uint8_t* mrow = meta + row * stride;
    unsigned keep = 0;
    if (n == 0) {
        keep = mrow[c >> 3];
    } else {
        for (int e = 0; e < count; ++e)
            if (nm_slot(mrow, c + e, n, m, bits) >= 0) keep |= 1u << e;
    }
    T* o = out + row * width + 8 * j;
    if (width % 8 == 0 && aligned16(out)) {
        Pack8<T> p = *reinterpret_cast<const Pack8<T>*>(o);
#pragma unroll
        for (int e = 0; e < 8; ++e)
            if (!((keep >> e) & 1u)) p.v[e] = from_f32<T>(0.f);
        *reinterpret_cast<Pack8<T>*>(o) = p;
    } else {
        for (int e = 0; e < count; ++e)
            if (!((keep >> e) & 1u)) o[e] = from_f32<T>(0.f);
    }
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
    extern "C" __global__ void mask_window_##S(const uint8_t* meta, T* out, int rows, int stride, int col0,   \
                                               int width, int n, int m, int bits) {                         \
        mask_window<T>(meta, out, rows, stride, col0, width, n, m, bits);                                   \
    }                                                                                                     \
    extern "C" __global__ void nonzero_mask_##S(const T* dense, uint8_t* mask, int rows, int cols,          \
                                                int stride) {                                              \
        nonzero_mask<T>(dense, mask, rows, cols, stride);                                                  \
    }

SPARSE_KERNELS(float, f32)
SPARSE_KERNELS(bf16, bf16)
