// Pruning scores and mask selection (crate::prune::scores and crate::prune::select on the GPU).
//
// Scores of w: [rows, cols] (T = f32 or bf16), out: [rows, cols] f32, computed in f64 and
// rounded once at the end like the CPU reference:
//   magnitude: |w|
//   wanda:     |w_ij| * sqrt(scaler_row_j)
//   ria:       (|w_ij| / col_sum_j + |w_ij| / row_sum_i) * sqrt(scaler_row_j)^a   (x / 0 -> 0)
// col_sum: per chunk of rows (grid over chunks x column blocks, coalesced), chunks added in order;
// row_sum: one block per row.
//
// Selection. key(s): the f32 bits mapped to a u32 whose unsigned order is f32 total order
// (-0 < +0), with every NaN mapped to key(-inf): the CPU reference sorts NaN as -inf and
// breaks that tie, like every other, by column index. Pruned = the k smallest (key, column).
//   select_rows_lowest: one 256-thread block per row. A 4-pass radix select (8-bit digits,
//     histogram in shared memory) finds the k-th smallest key v and want = how many keys equal
//     to v are among the k smallest; then one pass prunes keys < v and the first `want` keys
//     equal to v in column order (block prefix count). The row is streamed from global memory
//     each pass (no shared copy), so any row length works.
//   select_flat_*: the same over one long row, many blocks: per pass a histogram kernel
//     (global atomics on 256 integer bins: order-independent, so deterministic) and a one-block
//     "choose" kernel that updates state = {prefix so far, want}; then a per-chunk count of keys
//     equal to v and a write kernel that prefix-sums the counts of earlier chunks.
//   select_nm: per group of M consecutive columns prune the M - N smallest (key, column):
//     one thread per column, rank = #{q in group : (key_q, q) < (key_c, c)}, pruned iff
//     rank < M - N.
// Mask bytes: bit c % 8 of byte c / 8 of the row (stride bytes per row), 1 = kept. A warp owns
// 32 consecutive columns starting at a multiple of 32, ballots the kept bits and lanes 0-3
// write its 4 bytes, so every byte of a row (padding bits zero) is written exactly once.
//
// apply_mask: out = w where the mask bit is 1, +0 elsewhere.
#include "common.cuh"

#define FULL_MASK 0xffffffffu
#define SELECT_THREADS 256  // threads per selection block = radix bins (8-bit digits)
#define SELECT_WARPS (SELECT_THREADS / 32)
#define NAN_KEY 0x007fffffu  // key(-inf)

__device__ __forceinline__ uint32_t score_key(float s) {
    if (isnan(s)) return NAN_KEY;
    const uint32_t u = __float_as_uint(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum of v over the block in thread order (SELECT_THREADS threads); *total gets
// the block's sum. scratch: SELECT_WARPS words. Starts with a barrier, so calls may follow each
// other; every thread of the block must call it.
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* scratch, uint32_t* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const uint32_t y = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= o) incl += y;
    }
    __syncthreads();  // earlier readers of scratch are done
    if (lane == 31) scratch[warp] = incl;
    __syncthreads();
    uint32_t before = 0, sum = 0;
#pragma unroll
    for (int w = 0; w < SELECT_WARPS; ++w) {
        const uint32_t t = scratch[w];
        before += w < warp ? t : 0u;
        sum += t;
    }
    *total = sum;
    return before + incl - v;
}

// Bits of the key above digit `shift` (the prefix already fixed when that digit is counted).
__device__ __forceinline__ uint32_t prefix_mask_above(int shift) {
    return shift >= 24 ? 0u : (0xffffffffu << (shift + 8));
}

// Thread t owns bin t of `count` (the histogram of the candidates, whose number is >= want >= 1):
// returns true for the one thread whose bin holds the want-th smallest candidate, and sets
// *new_want to its rank within that bin.
__device__ __forceinline__ bool choose_bin(uint32_t count, uint32_t want, uint32_t* scratch, uint32_t* new_want) {
    uint32_t total;
    const uint32_t before = block_exclusive_scan(count, scratch, &total);
    *new_want = want - before;
    return before < want && want <= before + count;
}

// k-th smallest key (1 <= k <= n) of x[0, n) by one block: *kth, and *want = the number of keys
// equal to it among the k smallest.
__device__ void radix_select_block(const float* x, int n, uint32_t k, uint32_t* hist, uint32_t* scratch,
                                   uint32_t* chosen, uint32_t* kth, uint32_t* want_out) {
    uint32_t prefix = 0, want = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        const uint32_t mask = prefix_mask_above(shift);
        hist[threadIdx.x] = 0;
        __syncthreads();
        for (int c = threadIdx.x; c < n; c += SELECT_THREADS) {
            const uint32_t key = score_key(x[c]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
        }
        __syncthreads();
        uint32_t new_want;
        if (choose_bin(hist[threadIdx.x], want, scratch, &new_want)) {
            chosen[0] = threadIdx.x;
            chosen[1] = new_want;
        }
        __syncthreads();
        prefix |= chosen[0] << shift;
        want = chosen[1];
        // The next pass writes hist[threadIdx.x] (read above only by this thread) and chosen
        // only after the barriers inside its scan, which every thread reaches after reading it.
    }
    *kth = prefix;
    *want_out = want;
}

// Writes the mask bytes of columns [begin, end) of a row (x and mask_row point at column 0;
// begin is a multiple of 32, end is a multiple of 8 or the row's length): pruned are keys < kth
// and the first want_equal keys equal to kth in column order, of which equal_before lie before
// `begin`. Every thread of the block must call it.
__device__ void write_mask_range(const float* x, uint8_t* mask_row, int begin, int end, uint32_t kth,
                                 uint32_t want_equal, uint32_t equal_before, uint32_t* scratch) {
    const int lane = threadIdx.x & 31;
    uint32_t equal_seen = equal_before;
    for (int tile = begin; tile < end; tile += SELECT_THREADS) {
        const int c = tile + threadIdx.x;
        const bool valid = c < end;
        const uint32_t key = valid ? score_key(x[c]) : 0xffffffffu;
        const bool equal = valid && key == kth;
        uint32_t equal_in_tile;
        const uint32_t equal_rank = equal_seen + block_exclusive_scan(equal ? 1u : 0u, scratch, &equal_in_tile);
        const bool pruned = key < kth || (equal && equal_rank < want_equal);
        const uint32_t kept = __ballot_sync(FULL_MASK, valid && !pruned);
        if (lane < 4) {
            const int byte_col = tile + (threadIdx.x - lane) + 8 * lane;  // first column of the byte
            if (byte_col < end) mask_row[byte_col >> 3] = (uint8_t)(kept >> (8 * lane));
        }
        equal_seen += equal_in_tile;
    }
}

// Grid: rows blocks of SELECT_THREADS. Prunes the k lowest of every row (0 <= k <= cols).
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
    select_rows_lowest(const float* scores, uint8_t* mask, int rows, int cols, int stride, int k) {
    __shared__ uint32_t hist[SELECT_THREADS];
    __shared__ uint32_t scratch[SELECT_WARPS];
    __shared__ uint32_t chosen[2];
    const int row = blockIdx.x;
    if (row >= rows || blockDim.x != SELECT_THREADS) return;
    const float* x = scores + (size_t)row * cols;
    // k = 0: v = 0 is below every key (the smallest is NAN_KEY), so nothing is pruned.
    uint32_t kth = 0, want = 0;
    if (k > 0) radix_select_block(x, cols, (uint32_t)k, hist, scratch, chosen, &kth, &want);
    write_mask_range(x, mask + (size_t)row * stride, 0, cols, kth, want, 0, scratch);
}

// One histogram pass over x[0, n): grid-stride, bins of the candidates (keys whose bits above
// `shift` equal state[0]) added to hist (zeroed by the previous choose, or by the host).
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
    select_flat_hist(const float* x, int n, int shift, const uint32_t* state, uint32_t* hist) {
    __shared__ uint32_t local[SELECT_THREADS];
    if (blockDim.x != SELECT_THREADS) return;
    const uint32_t prefix = state[0], mask = prefix_mask_above(shift);
    local[threadIdx.x] = 0;
    __syncthreads();
    for (size_t c = blockIdx.x * (size_t)SELECT_THREADS + threadIdx.x; c < (size_t)n;
         c += (size_t)gridDim.x * SELECT_THREADS) {
        const uint32_t key = score_key(x[c]);
        if ((key & mask) == prefix) atomicAdd(&local[(key >> shift) & 0xffu], 1u);
    }
    __syncthreads();
    const uint32_t count = local[threadIdx.x];
    if (count != 0) atomicAdd(&hist[threadIdx.x], count);
}

// One block: fixes the digit at `shift` from hist, updates state = {prefix, want}, zeroes hist.
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
    select_flat_choose(uint32_t* hist, uint32_t* state, int shift) {
    __shared__ uint32_t scratch[SELECT_WARPS];
    if (blockDim.x != SELECT_THREADS) return;
    const uint32_t want = state[1];
    const uint32_t count = hist[threadIdx.x];
    hist[threadIdx.x] = 0;
    uint32_t new_want;
    // state is read above by every thread before the scan's barriers; written after them.
    if (choose_bin(count, want, scratch, &new_want)) {
        state[0] |= (uint32_t)threadIdx.x << shift;
        state[1] = new_want;
    }
}

// Block b: counts[b] = number of keys equal to state[0] in x[b * chunk, min(n, (b + 1) * chunk)).
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
    select_flat_count_equal(const float* x, int n, int chunk, const uint32_t* state, uint32_t* counts) {
    __shared__ uint32_t scratch[SELECT_WARPS];
    if (blockDim.x != SELECT_THREADS) return;
    const uint32_t kth = state[0];
    const int begin = blockIdx.x * chunk;
    const int end = min(n, begin + chunk);
    uint32_t mine = 0;
    for (int c = begin + threadIdx.x; c < end; c += SELECT_THREADS) mine += score_key(x[c]) == kth ? 1u : 0u;
    uint32_t total;
    block_exclusive_scan(mine, scratch, &total);
    if (threadIdx.x == 0) counts[blockIdx.x] = total;
}

// Block b writes the mask bytes of its chunk (chunk: a multiple of SELECT_THREADS).
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
    select_flat_write(const float* x, uint8_t* mask, int n, int chunk, const uint32_t* state,
                      const uint32_t* counts) {
    __shared__ uint32_t scratch[SELECT_WARPS];
    if (blockDim.x != SELECT_THREADS) return;
    uint32_t mine = 0;
    for (int b = threadIdx.x; b < (int)blockIdx.x; b += SELECT_THREADS) mine += counts[b];
    uint32_t equal_before;
    block_exclusive_scan(mine, scratch, &equal_before);
    const int begin = blockIdx.x * chunk;
    write_mask_range(x, mask, begin, min(n, begin + chunk), state[0], state[1], equal_before, scratch);
}

// Grid: (rows, ceil(cols / SELECT_THREADS)). m divides cols (checked by the host).
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
    select_nm(const float* scores, uint8_t* mask, int rows, int cols, int stride, int n, int m) {
    const int row = blockIdx.x;
    const int c = blockIdx.y * SELECT_THREADS + threadIdx.x;
    if (row >= rows || blockDim.x != SELECT_THREADS) return;
    const float* x = scores + (size_t)row * cols;
    bool keep = false;
    if (c < cols) {
        const uint32_t key = score_key(x[c]);
        const int g0 = c - c % m;
        int rank = 0;
        for (int q = g0; q < g0 + m; ++q) {
            const uint32_t kq = score_key(x[q]);
            rank += (kq < key || (kq == key && q < c)) ? 1 : 0;
        }
        keep = rank >= m - n;
    }
    const uint32_t kept = __ballot_sync(FULL_MASK, keep);
    const int lane = threadIdx.x & 31;
    if (lane < 4) {
        const int byte_col = blockIdx.y * SELECT_THREADS + (threadIdx.x - lane) + 8 * lane;
        if (byte_col < cols) mask[(size_t)row * stride + (byte_col >> 3)] = (uint8_t)(kept >> (8 * lane));
    }
}

// f64 sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double r = lane < nwarps ? scratch[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(FULL_MASK, r, o);
    return r;
}

// act[j] = sqrt(scaler_row[j])^a
extern "C" __global__ void ria_act(const double* scaler_row, double* act, double a, int cols) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < cols) act[j] = pow(sqrt(scaler_row[j]), a);
}

// col_sum[j] = sum over chunks of partial[chunk, j], in chunk order.
extern "C" __global__ void ria_col_reduce(const double* partial, double* col_sum, int chunks, int cols) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double s = 0.0;
    for (int c = 0; c < chunks; ++c) s += partial[(size_t)c * cols + j];
    col_sum[j] = s;
}

template <typename T>
__device__ void magnitude_scores(const T* w, float* out, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = fabsf(to_f32(w[i]));
}

// Grid: (rows, ceil(cols / blockDim.x)).
template <typename T>
__device__ void wanda_scores(const T* w, const double* scaler_row, float* out, int rows, int cols) {
    const int row = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= rows || j >= cols) return;
    const size_t i = (size_t)row * cols + j;
    out[i] = __double2float_rn(__dmul_rn((double)fabsf(to_f32(w[i])), sqrt(scaler_row[j])));
}

// Grid: (chunks, ceil(cols / blockDim.x)); partial[chunk, j] = sum of |w| over the chunk's rows.
template <typename T>
__device__ void ria_col_partial(const T* w, double* partial, int rows, int cols, int rows_per_chunk) {
    const int chunk = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    const int r0 = chunk * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
    double s = 0.0;
    for (int r = r0; r < r1; ++r) s += (double)fabsf(to_f32(w[(size_t)r * cols + j]));
    partial[(size_t)chunk * cols + j] = s;
}

// One block per row.
template <typename T>
__device__ void ria_row_sum(const T* w, double* row_sum, int rows, int cols) {
    __shared__ double scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const T* wr = w + (size_t)row * cols;
    double s = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += (double)fabsf(to_f32(wr[j]));
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) row_sum[row] = s;
}

// Grid: (rows, ceil(cols / blockDim.x)).
template <typename T>
__device__ void ria_scores(const T* w, const double* col_sum, const double* row_sum, const double* act,
                           float* out, int rows, int cols) {
    const int row = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= rows || j >= cols) return;
    const size_t i = (size_t)row * cols + j;
    const double v = (double)fabsf(to_f32(w[i]));
    const double cs = col_sum[j], rs = row_sum[row];
    const double rel = __dadd_rn(cs > 0.0 ? __ddiv_rn(v, cs) : 0.0, rs > 0.0 ? __ddiv_rn(v, rs) : 0.0);
    out[i] = __double2float_rn(__dmul_rn(rel, act[j]));
}

// Grid: (rows, ceil(cols / blockDim.x)); mask: [rows, stride] bytes.
template <typename T>
__device__ void apply_mask(const T* w, const uint8_t* mask, T* out, int rows, int cols, int stride) {
    const int row = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= rows || j >= cols) return;
    const size_t i = (size_t)row * cols + j;
    const bool keep = (mask[(size_t)row * stride + (j >> 3)] >> (j & 7)) & 1;
    out[i] = keep ? w[i] : from_f32<T>(0.f);
}

#define PRUNE_SELECT_KERNELS(T, S)                                                                     \
    extern "C" __global__ void magnitude_scores_##S(const T* w, float* out, size_t n) {                \
        magnitude_scores<T>(w, out, n);                                                                \
    }                                                                                                  \
    extern "C" __global__ void wanda_scores_##S(const T* w, const double* scaler_row, float* out,      \
                                                int rows, int cols) {                                  \
        wanda_scores<T>(w, scaler_row, out, rows, cols);                                               \
    }                                                                                                  \
    extern "C" __global__ void ria_col_partial_##S(const T* w, double* partial, int rows, int cols,    \
                                                   int rows_per_chunk) {                               \
        ria_col_partial<T>(w, partial, rows, cols, rows_per_chunk);                                    \
    }                                                                                                  \
    extern "C" __global__ void ria_row_sum_##S(const T* w, double* row_sum, int rows, int cols) {      \
        ria_row_sum<T>(w, row_sum, rows, cols);                                                        \
    }                                                                                                  \
    extern "C" __global__ void ria_scores_##S(const T* w, const double* col_sum,                      \
                                              const double* row_sum, const double* act, float* out,    \
                                              int rows, int cols) {                                    \
        ria_scores<T>(w, col_sum, row_sum, act, out, rows, cols);                                      \
    }                                                                                                  \
    extern "C" __global__ void apply_mask_##S(const T* w, const uint8_t* mask, T* out, int rows,       \
                                              int cols, int stride) {                                  \
        apply_mask<T>(w, mask, out, rows, cols, stride);                                               \
    }

PRUNE_SELECT_KERNELS(float, f32)
PRUNE_SELECT_KERNELS(bf16, bf16)
