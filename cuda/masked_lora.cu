// The masked-LoRA effective weight built in one pass from the compressed base:
//   out [rows, cols] (T) = kept(r, c) ? w(r, c) + Σ_k sB[r, k]·A[k, c] : 0,   sB = s·B
// with the sum in f32 (k in order, then + w) rounded once to T; A [rank, cols] and
// B [rows, rank] (T). It replaces the GEMM s·B·A into the workspace followed by an expansion
// pass (cuda/sparse.cu): the workspace is written once and never read back.
//
// A block of WEFF_THREADS threads takes WEFF_ROWS rows (A's loads are shared by them); per
// step each thread takes 8 columns of every row: the rank-r dot for its 8 columns ×
// WEFF_ROWS rows in registers, then 8 outputs per row (one 16-byte store for bf16, two for
// f32, where A and out are 16-byte aligned and cols % 8 == 0; element by element otherwise).
// Dynamic shared memory: WEFF_ROWS·rank floats (sB of the block's rows).
//
// weff_bitmask: values [nnz] row by row, mask [rows, stride = ceil(cols/8)] (bit c%8 of byte
//   c/8; bits past cols are ignored), row_offsets [rows + 1]. A thread's 8 columns are one
//   mask byte; the rank of its first kept value comes from a block-wide exclusive scan of the
//   bytes' popcounts (warp shuffles, then the warps' totals in shared memory). A row whose
//   mask keeps more columns than its offsets give writes NaN there instead of reading another
//   row's values.
// weff_two_four: a 2:4 base, values [rows, cols/2], positions [rows, stride = ceil(cols/8)]
//   (2 bits per value, LSB first: a thread's 8 columns are one positions byte and values
//   cols/2 … at 4·j). Two values of a group at one position keep the later one, as the
//   expansion does.
#include "common.cuh"

#define WEFF_THREADS 256
#define WEFF_ROWS 4

// sB [WEFF_ROWS, rank] of the block's rows (0 past the last row); ends with a barrier.
template <typename T>
__device__ __forceinline__ void load_sb(const T* b, float s, float* sb, int row0, int rows, int rank) {
    for (int i = threadIdx.x; i < WEFF_ROWS * rank; i += blockDim.x) {
        const int r = row0 + i / rank;
        sb[i] = r < rows ? s * to_f32(b[(size_t)r * rank + i % rank]) : 0.f;
    }
    __syncthreads();
}

// acc[rr][e] = Σ_k sB[rr, k]·A[k, c0 + e] for the columns of `inside` (bit e: column c0 + e
// lies in the row), 0 elsewhere.
template <typename T>
__device__ __forceinline__ void lora_dot8(const T* a, const float* sb, int rank, int cols, int c0, unsigned inside,
                                          bool vectors, float acc[WEFF_ROWS][8]) {
#pragma unroll
    for (int rr = 0; rr < WEFF_ROWS; ++rr)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[rr][e] = 0.f;
    if (inside == 0) return;
    // Four of A's rows in flight at a time: the loads, not the FMAs, bound this loop.
#pragma unroll 4
    for (int k = 0; k < rank; ++k) {
        float av[8];
        load8(a + (size_t)k * cols + c0, vectors, inside == 0xffu ? 8 : __popc(inside), av);
#pragma unroll
        for (int rr = 0; rr < WEFF_ROWS; ++rr) {
            const float bk = sb[rr * rank + k];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[rr][e] += bk * av[e];
        }
    }
}

// The columns of the 8 starting at c0 that lie inside a row of `cols`.
__device__ __forceinline__ unsigned inside8(int c0, int cols) {
    return c0 + 8 <= cols ? 0xffu : c0 < cols ? (1u << (cols - c0)) - 1u : 0u;
}

template <typename T>
__device__ void weff_bitmask(const T* values, const uint8_t* mask, const unsigned* row_offsets, const T* a,
                             const T* b, float s, T* out, int rows, int cols, int stride, int rank) {
    extern __shared__ float sb[];  // [WEFF_ROWS, rank]
    __shared__ unsigned warp_totals[WEFF_ROWS][WEFF_THREADS / 32];
    const int row0 = blockIdx.x * WEFF_ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    unsigned next[WEFF_ROWS], end[WEFF_ROWS];  // the next value of each row, and the row's end
#pragma unroll
    for (int rr = 0; rr < WEFF_ROWS; ++rr) {
        const int r = row0 + rr;
        next[rr] = r < rows ? row_offsets[r] : 0u;
        end[rr] = r < rows ? row_offsets[r + 1] : 0u;
    }
    const bool vectors = cols % 8 == 0 && aligned16(a) && aligned16(out);
    load_sb(b, s, sb, row0, rows, rank);
    for (int j0 = 0; j0 < stride; j0 += blockDim.x) {
        const int j = j0 + threadIdx.x, c0 = 8 * j;
        const unsigned inside = inside8(c0, cols);
        float acc[WEFF_ROWS][8];
        lora_dot8(a, sb, rank, cols, c0, inside, vectors, acc);
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
            float o[8];
            unsigned slot = before[rr];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                o[e] = 0.f;
                if ((bits[rr] >> e) & 1u) {
                    o[e] = slot < end[rr] ? to_f32(values[slot]) + acc[rr][e] : nanf("");
                    ++slot;
                }
            }
            store8(out + (size_t)r * cols + c0, vectors, __popc(inside), o);
        }
    }
}

template <typename T>
__device__ void weff_two_four(const T* values, const uint8_t* positions, const T* a, const T* b, float s, T* out,
                              int rows, int cols, int stride, int rank) {
    extern __shared__ float sb[];  // [WEFF_ROWS, rank]
    const int row0 = blockIdx.x * WEFF_ROWS;
    const bool vectors = cols % 8 == 0 && aligned16(a) && aligned16(out);
    load_sb(b, s, sb, row0, rows, rank);
    const size_t per_row = (size_t)cols / 2;
    for (int j = threadIdx.x; j < stride; j += blockDim.x) {
        const int c0 = 8 * j;
        const unsigned inside = inside8(c0, cols);  // 0xff, or 0x0f for a last lone group
        float acc[WEFF_ROWS][8];
        lora_dot8(a, sb, rank, cols, c0, inside, vectors, acc);
        const int slots = inside == 0xffu ? 4 : 2;
#pragma unroll
        for (int rr = 0; rr < WEFF_ROWS; ++rr) {
            const int r = row0 + rr;
            if (r >= rows) break;
            const unsigned pos = positions[(size_t)r * stride + j];
            const T* v = values + (size_t)r * per_row + 4 * (size_t)j;
            float o[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            // Slot q of the thread's 8 columns lands in column 4·(q / 2) + its position; the
            // loops unroll, so o and acc stay in registers (no indexing by a variable).
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                if (q >= slots) break;
                const int col = 4 * (q / 2) + (int)((pos >> (2 * q)) & 3u);
                const float w = to_f32(v[q]);
#pragma unroll
                for (int e = 4 * (q / 2); e < 4 * (q / 2) + 4; ++e)
                    if (e == col) o[e] = w + acc[rr][e];
            }
            store8(out + (size_t)r * cols + c0, vectors, __popc(inside), o);
        }
    }
}

#define MASKED_LORA_KERNELS(T, S)                                                                                \
    extern "C" __global__ void masked_lora_weff_bitmask_##S(const T* values, const uint8_t* mask,               \
                                                            const unsigned* row_offsets, const T* a, const T* b, \
                                                            float s, T* out, int rows, int cols, int stride,     \
                                                            int rank) {                                          \
        weff_bitmask<T>(values, mask, row_offsets, a, b, s, out, rows, cols, stride, rank);                      \
    }                                                                                                            \
    extern "C" __global__ void masked_lora_weff_two_four_##S(const T* values, const uint8_t* positions,          \
                                                             const T* a, const T* b, float s, T* out, int rows,   \
                                                             int cols, int stride, int rank) {                    \
        weff_two_four<T>(values, positions, a, b, s, out, rows, cols, stride, rank);                              \
    }

MASKED_LORA_KERNELS(float, f32)
MASKED_LORA_KERNELS(bf16, bf16)
