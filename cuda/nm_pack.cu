// N:M compression in the crate::sparse::NmMatrix layout. dense: [rows, cols] (T = f32 or bf16,
// copied bit for bit); mask: [rows, mask_stride] bitmask bytes (bit c % 8 of byte c / 8, 1 = kept);
//   values:  [rows, per_row], per_row = cols / m * n: slot s = g * n + i holds the i-th kept
//            value of group g (columns g*m .. g*m + m - 1) in column order;
//   indices: [rows, index_stride] bytes: slot s's in-group position in bits [s*bits, s*bits + bits)
//            of the row, LSB first (bit k of the row is bit k % 8 of byte k / 8); padding bits 0.
// nm_compress_values: one thread per slot; the thread of slot i = 0 of a group also checks that
//   the group keeps exactly n, recording the smallest bad flat group index row * (cols/m) + g in
//   *bad_group (atomicMin: the result does not depend on thread order).
// nm_compress_indices: one thread per index byte, so no two threads write one byte.
// Decompression is cuda/sparse.cu's nm_expand (one thread per dense element: the value of the
//   group's slot whose position is the element's, the last such slot as the CPU does, else +0).
// A group keeping fewer than n entries reads position 0 for its missing slots: garbage that the
// host discards on seeing *bad_group, never an out-of-bounds read.
#include "common.cuh"

// In-group position of the i-th kept column of group g of a mask row (0 when there is none);
// *kept = number of kept columns in the group.
__device__ __forceinline__ int nth_kept(const uint8_t* mask_row, int g, int m, int i, int* kept) {
    int count = 0, pos = 0;
    const int c0 = g * m;
    for (int p = 0; p < m; ++p) {
        const int c = c0 + p;
        if ((mask_row[c >> 3] >> (c & 7)) & 1) {
            if (count == i) pos = p;
            ++count;
        }
    }
    *kept = count;
    return pos;
}

// Grid: (rows, ceil(per_row / blockDim.x)).
template <typename T>
__device__ void nm_compress_values(const T* dense, const uint8_t* mask, T* values, unsigned long long* bad_group,
                                   int rows, int cols, int mask_stride, int n, int m) {
    const int row = blockIdx.x, slot = blockIdx.y * blockDim.x + threadIdx.x;
    const int groups = cols / m, per_row = groups * n;
    if (row >= rows || slot >= per_row) return;
    const int g = slot / n, i = slot % n;
    int kept;
    const int p = nth_kept(mask + (size_t)row * mask_stride, g, m, i, &kept);
    if (i == 0 && kept != n) atomicMin(bad_group, (unsigned long long)row * groups + g);
    values[(size_t)row * per_row + slot] = dense[(size_t)row * cols + g * m + p];
}

// Grid: (rows, ceil(index_stride / blockDim.x)).
extern "C" __global__ void nm_compress_indices(const uint8_t* mask, uint8_t* indices, int rows, int cols,
                                               int mask_stride, int index_stride, int n, int m, int bits) {
    const int row = blockIdx.x, byte = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= rows || byte >= index_stride) return;
    const int per_row = cols / m * n;
    const uint8_t* mask_row = mask + (size_t)row * mask_stride;
    const int first_bit = byte * 8;
    const int s_last = min(per_row - 1, (first_bit + 7) / bits);
    uint32_t out = 0;
    for (int s = first_bit / bits; s <= s_last; ++s) {
        int kept;
        const int p = nth_kept(mask_row, s / n, m, s % n, &kept);
        for (int b = 0; b < bits; ++b) {
            const int at = s * bits + b - first_bit;
            if (at >= 0 && at < 8 && ((p >> b) & 1)) out |= 1u << at;
        }
    }
    indices[(size_t)row * index_stride + byte] = (uint8_t)out;
}

#define NM_PACK_KERNELS(T, S)                                                                          \
    extern "C" __global__ void nm_compress_values_##S(const T* dense, const uint8_t* mask, T* values,   \
                                                      unsigned long long* bad_group, int rows,         \
                                                      int cols, int mask_stride, int n, int m) {        \
        nm_compress_values<T>(dense, mask, values, bad_group, rows, cols, mask_stride, n, m);           \
    }

NM_PACK_KERNELS(float, f32)
NM_PACK_KERNELS(bf16, bf16)
