// The masked-LoRA effective weight built in one pass from the compressed base:
//   out [rows, cols] (T) = kept(r, c) ? w(r, c) + Σ_k sB[r, k]·A[k, c] : 0,   sB = s·B
// with the sum in f32 (k in order, then + w) rounded once to T. The base is a bitmask
// SparseWeight: values [nnz] (T) row by row, mask [rows, stride = ceil(cols/8)] (bit c%8 of
// byte c/8; bits past cols are ignored), row_offsets [rows + 1]; A [rank, cols] and
// B [rows, rank] (T). It replaces the GEMM s·B·A into the workspace followed by an expansion
// pass (cuda/sparse.cu): the workspace is written once and never read back.
//
// A block of WEFF_THREADS threads takes WEFF_ROWS rows (A's loads are shared by them); per
// step each thread takes one mask byte (8 columns) of every row: the rank-r dot for its 8
// columns × WEFF_ROWS rows in registers, the rank of its first kept value by a block-wide
// exclusive scan of the bytes' popcounts (warp shuffles, then the warps' totals in shared
// memory), then 8 outputs per row (one 16-byte store for bf16, two for f32, where A and out
// are 16-byte aligned and cols % 8 == 0; element by element otherwise). A row whose mask keeps
// more columns than its offsets give writes NaN there instead of reading another row's values.
// Dynamic shared memory: WEFF_ROWS·rank floats (sB of the block's rows).
#include "common.cuh"

#define WEFF_THREADS 256
#define WEFF_ROWS 4

template <typename T>
__device__ void weff_bitmask(const T* values, const uint8_t* mask, const unsigned* row_offsets, const T* a,
                             const T* b, float s, T* out, int rows, int cols, int stride, int rank) {
    extern __shared__ float sb[];  // [WEFF_ROWS, rank]
    __shared__ unsigned warp_totals[WEFF_ROWS][WEFF_THREADS / 32];
    const int row0 = blockIdx.x * WEFF_ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int i = threadIdx.x; i < WEFF_ROWS * rank; i += blockDim.x) {
        const int r = row0 + i / rank;
        sb[i] = r < rows ? s * to_f32(b[(size_t)r * rank + i % rank]) : 0.f;
    }
    unsigned next[WEFF_ROWS], end[WEFF_ROWS];  // the next value of each row, and the row's end
#pragma unroll
    for (int rr = 0; rr < WEFF_ROWS; ++rr) {
        const int r = row0 + rr;
        next[rr] = r < rows ? row_offsets[r] : 0u;
        end[rr] = r < rows ? row_offsets[r + 1] : 0u;
    }
    const bool vectors = cols % 8 == 0 && ((uintptr_t)a | (uintptr_t)out) % 16 == 0;
    __syncthreads();
    for (int j0 = 0; j0 < stride; j0 += blockDim.x) {
        const int j = j0 + threadIdx.x, c0 = 8 * j;
        // The columns of this thread's byte that lie inside the row.
        const unsigned inside = c0 + 8 <= cols ? 0xffu : c0 < cols ? (1u << (cols - c0)) - 1u : 0u;
        float acc[WEFF_ROWS][8];
#pragma unroll
        for (int rr = 0; rr < WEFF_ROWS; ++rr)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[rr][e] = 0.f;
        if (inside != 0) {
            for (int k = 0; k < rank; ++k) {
                const T* ak = a + (size_t)k * cols + c0;
                float av[8];
                if (vectors) {
                    const Pack8<T> p = *reinterpret_cast<const Pack8<T>*>(ak);
#pragma unroll
                    for (int e = 0; e < 8; ++e) av[e] = to_f32(p.v[e]);
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) av[e] = (inside >> e) & 1u ? to_f32(ak[e]) : 0.f;
                }
#pragma unroll
                for (int rr = 0; rr < WEFF_ROWS; ++rr) {
                    const float bk = sb[rr * rank + k];
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[rr][e] += bk * av[e];
                }
            }
        }
        // Kept bits of each row's byte, and their exclusive prefix over the block.
        unsigned bits[WEFF_ROWS], before[WEFF_ROWS];
#pragma unroll
        for (int rr = 0; rr < WEFF_ROWS; ++rr) {
            const int r = row0 + rr;
            bits[rr] = r < rows && j < stride ? mask[(size_t)r * stride + j] & inside : 0u;
            unsigned incl = __popc(bits[rr]);
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned up = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += up;
            }
            if (lane == 31) warp_totals[rr][warp] = incl;
            before[rr] = incl - __popc(bits[rr]);
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < WEFF_ROWS; ++rr) {
            unsigned earlier = 0, total = 0;
            for (int w = 0; w < nwarps; ++w) {
                const unsigned t = warp_totals[rr][w];
                earlier += w < warp ? t : 0u;
                total += t;
            }
            before[rr] += next[rr] + earlier;
            next[rr] += total;
        }
        __syncthreads();  // warp_totals is rewritten by the next step
        if (inside == 0) continue;
#pragma unroll
        for (int rr = 0; rr < WEFF_ROWS; ++rr) {
            const int r = row0 + rr;
            if (r >= rows) break;
            Pack8<T> o;
            unsigned slot = before[rr];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                float v = 0.f;
                if ((bits[rr] >> e) & 1u) {
                    v = slot < end[rr] ? to_f32(values[slot]) + acc[rr][e] : nanf("");
                    ++slot;
                }
                o.v[e] = from_f32<T>(v);
            }
            T* orow = out + (size_t)r * cols + c0;
            if (vectors) {
                *reinterpret_cast<Pack8<T>*>(orow) = o;
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    if ((inside >> e) & 1u) orow[e] = o.v[e];
            }
        }
    }
}

#define MASKED_LORA_KERNELS(T, S)                                                                                \
    extern "C" __global__ void masked_lora_weff_bitmask_##S(const T* values, const uint8_t* mask,               \
                                                            const unsigned* row_offsets, const T* a, const T* b, \
                                                            float s, T* out, int rows, int cols, int stride,     \
                                                            int rank) {                                          \
        weff_bitmask<T>(values, mask, row_offsets, a, b, s, out, rows, cols, stride, rank);                      \
    }

MASKED_LORA_KERNELS(float, f32)
MASKED_LORA_KERNELS(bf16, bf16)
