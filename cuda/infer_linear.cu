// Decode kernels of the inference linear (ops::infer_linear::sparse on CUDA for N <= 4 tokens):
//   y[t, r] = sum_c x[t, c] * W[r, c]   (t < N, r < rows; f32 sums, y rounded to T),
// read straight from a compressed W [rows, cols] (never expanded; decode time is bytes read):
//   bitmask_decode_*: values [nnz] row by row, mask [rows, stride = ceil(cols/8)] (bit c%8 of
//                     byte c/8), row_offsets [rows + 1] (row r's values are
//                     values[row_offsets[r] .. row_offsets[r + 1]), in column order);
//   nm_decode_*:      values [rows, per_row = cols/m*n], positions [rows, index_stride]: the
//                     in-group position of every value, `bits` = ceil(log2 m) bits each,
//                     LSB-first; value slot s of a row sits at column (s / n) * m + position.
// x: [N, cols], y: [N, rows], in T (f32 or bf16; the values too).
//
// Layout of the work (both kernels):
//   - x is staged once per block in dynamic shared memory as f32 [N][pitch], column c at
//     c + c/32 (a padding float every 32 columns: at one step the lanes read columns about
//     VEC/density apart, e.g. 8 or 16, which would fall into 4 or 2 banks unpadded); the
//     launcher sizes it and refuses x that does not fit (ops::infer_linear then takes its
//     expand + GEMM path);
//   - one warp per row, rows grid-strided over the warps of a grid sized to the GPU;
//   - values are read in 16-byte-aligned windows of 32 * VEC values (VEC = 16 / sizeof(T)):
//     lane l takes the VEC consecutive values of its 16-byte chunk, in one vector load when
//     the whole chunk belongs to the row (element loads at the row's two ends), so each
//     warp load is 512 contiguous bytes; every value then needs its column:
//   - bitmask: the warp holds 32 mask words (1024 columns, lane l word l) and their exclusive
//     kept-bit prefix; a lane finds the word of its first value by a 5-step shuffle binary
//     search, the bit by a popcount select, and walks the following kept bits (lowest set
//     bit first), the warp shuffling the next non-empty word to the lanes that need it. A
//     value window that outruns the 32 words moves the warp on to the next 32, so windows
//     and mask chunks advance independently (sparse stretches and empty rows included);
//   - N:M: a lane reads the <= 8 position bytes of its VEC slots at once (VEC * bits <= 56
//     bits, so m <= 128) and counts groups as it goes;
//   - both: each lane asks for its chunk of the window after next into L2 (prefetch_l2) as
//     it starts a window, so a warp has more than its current 512 bytes on the way.
// Robust to inconsistent input: a row reads only values below min(row_offsets[r + 1], nnz),
// mask bits past cols are dropped, N:M positions >= m are skipped.
#include "common.cuh"

constexpr int IL_THREADS = 512;
constexpr int IL_WARPS = IL_THREADS / 32;
constexpr int IL_MIN_BLOCKS = 2;  // per SM: at most 64 registers a thread (MAX_BLOCKS_PER_SM in cuda.rs)
constexpr int IL_MAX_TOKENS = 4;  // DECODE_MAX_TOKENS in ops/infer_linear/cuda.rs
constexpr unsigned IL_FULL = 0xffffffffu;

// x [N][pitch] as f32 (see the header); sized by the launcher.
extern __shared__ float infer_linear_x[];

// Where column c of a token's x sits in shared memory; the pitch is padded(cols).
__device__ __forceinline__ int padded(int c) { return c + (c >> 5); }

// Sixteen bytes of T, for one vector load.
template <typename T>
struct alignas(16) Chunk16 {
    T e[16 / sizeof(T)];
};

// Stages x [tokens, cols] into infer_linear_x, then waits for the whole block.
template <typename T>
__device__ __forceinline__ void stage_x(const T* __restrict__ x, int tokens, int cols, int pitch) {
    for (int t = 0; t < tokens; ++t)
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            infer_linear_x[t * pitch + padded(c)] = to_f32(x[(size_t)t * cols + c]);
    __syncthreads();
}

// Index of the first value of the first 16-byte-aligned chunk at or before `start`.
template <typename T>
__device__ __forceinline__ long long window_start(const T* values, long long start) {
    constexpr int VEC = 16 / sizeof(T);
    const long long misaligned = (long long)(((uintptr_t)values / sizeof(T)) % VEC);
    return (start + misaligned) / VEC * VEC - misaligned;
}

// clamp(v, lo, hi) for the element ranges of a lane's chunk.
__device__ __forceinline__ int clamp_to(long long v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : (int)v;
}

// v[e] = values[g0 + e] as f32 for e in [ea, eb), 0 elsewhere: one 16-byte load when the
// whole chunk is wanted (g0 is chunk-aligned), else element loads of the wanted ones.
template <typename T, int VEC>
__device__ __forceinline__ void load_chunk(const T* __restrict__ values, long long g0, int ea, int eb,
                                           float (&v)[VEC]) {
    if (ea == 0 && eb == VEC) {
        const Chunk16<T> c = *reinterpret_cast<const Chunk16<T>*>(values + g0);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[e] = to_f32(c.e[e]);
    } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[e] = e >= ea && e < eb ? to_f32(values[g0 + e]) : 0.f;
    }
}

// acc[t] += v * x[t, c] for t < tokens.
__device__ __forceinline__ void accumulate(float (&acc)[IL_MAX_TOKENS], float v, int c, int tokens, int pitch) {
    const float* xc = infer_linear_x + padded(c);
#pragma unroll
    for (int t = 0; t < IL_MAX_TOKENS; ++t)
        if (t < tokens) acc[t] = fmaf(v, xc[t * pitch], acc[t]);
}

// Lane 0 writes y[t, r] = the warp's sum of acc[t].
template <typename T>
__device__ __forceinline__ void write_row(T* __restrict__ y, float (&acc)[IL_MAX_TOKENS], int tokens, int rows,
                                          int r) {
#pragma unroll
    for (int t = 0; t < IL_MAX_TOKENS; ++t) {
        if (t < tokens) {
            const float sum = warp_sum(acc[t]);
            if ((threadIdx.x & 31) == 0) y[(size_t)t * rows + r] = from_f32<T>(sum);
        }
    }
}

// Mask word wi of a row (columns 32 wi .. 32 wi + 31), bits at columns >= cols cleared, 0
// past the row's stride bytes.
__device__ __forceinline__ unsigned load_word(const uint8_t* __restrict__ mrow, int wi, int stride, int cols) {
    const int b0 = wi * 4;
    if (b0 >= stride) return 0u;
    unsigned word = 0u;
    if (b0 + 4 <= stride && ((uintptr_t)(mrow + b0) & 3) == 0) {
        word = *reinterpret_cast<const unsigned*>(mrow + b0);
    } else {
        for (int b = 0; b < 4 && b0 + b < stride; ++b) word |= (unsigned)mrow[b0 + b] << (8 * b);
    }
    const int left = cols - 32 * wi;  // >= 1, as b0 < stride = ceil(cols / 8)
    return left >= 32 ? word : word & ((1u << left) - 1u);
}

// Kept bits of the warp's 32 words before this lane's (excl); returns their total.
__device__ __forceinline__ int scan_kept(unsigned word, int& excl) {
    const int lane = threadIdx.x & 31, own = __popc(word);
    int incl = own;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const int below = __shfl_up_sync(IL_FULL, incl, d);
        if (lane >= d) incl += below;
    }
    excl = incl - own;
    return __shfl_sync(IL_FULL, incl, 31);
}

// Position of the k-th (from 0) set bit of `bits`, k < popc(bits) (any position otherwise).
__device__ __forceinline__ int nth_set_bit(unsigned bits, int k) {
    int pos = 0;
#pragma unroll
    for (int half = 16; half > 0; half >>= 1) {
        const int low = __popc(bits & ((1u << half) - 1u));
        if (k >= low) {
            k -= low;
            bits >>= half;
            pos += half;
        }
    }
    return pos;
}

// Index of the lowest set bit of a non-zero word.
__device__ __forceinline__ int lowest_bit(unsigned bits) { return __popc((bits & (0u - bits)) - 1u); }

template <typename T>
__device__ void bitmask_decode(const T* __restrict__ x, const T* __restrict__ values,
                               const uint8_t* __restrict__ mask, const unsigned* __restrict__ row_offsets,
                               T* __restrict__ y, int tokens, int rows, int cols, int stride, unsigned nnz) {
    constexpr int VEC = 16 / sizeof(T);
    const int pitch = padded(cols), lane = threadIdx.x & 31, words = (cols + 31) >> 5;
    stage_x(x, tokens, cols, pitch);
    for (int r = blockIdx.x * IL_WARPS + (threadIdx.x >> 5); r < rows; r += gridDim.x * IL_WARPS) {
        const uint8_t* mrow = mask + (size_t)r * stride;
        const long long end = min(row_offsets[r + 1], nnz);
        const long long start = min((long long)row_offsets[r], end);
        float acc[IL_MAX_TOKENS] = {0.f, 0.f, 0.f, 0.f};
        // The mask chunk in the warp: words chunk_word + lane; its kept values are
        // values[chunk_base .. chunk_base + kept), the lane's word's from chunk_base + excl.
        int chunk_word = 0, excl;
        unsigned word = load_word(mrow, lane, stride, cols);
        int kept = scan_kept(word, excl);
        long long chunk_base = start;
        for (long long w0 = window_start(values, start); w0 < end; w0 += 32 * VEC) {
            const long long g0 = w0 + VEC * lane;  // the lane's chunk: values g0 .. g0 + VEC - 1
            const int ea = clamp_to(start - g0, 0, VEC), eb = clamp_to(end - g0, 0, VEC);
            // The row's window after next on its way while this one is worked through.
            if (g0 + 64 * VEC < end) prefetch_l2(values + g0 + 64 * VEC);
            float v[VEC];
            load_chunk<T, VEC>(values, g0, ea, eb, v);
            const long long window_end = min(w0 + 32 * VEC, end);
            while (true) {
                // The lane's values in this mask chunk: elements [ca, cb) of its chunk.
                const int ca = clamp_to(chunk_base - g0, ea, eb), cb = clamp_to(chunk_base + kept - g0, ea, eb);
                const int q = ca < cb ? (int)(g0 + ca - chunk_base) : 0;  // rank of element ca in the chunk
                int w = 0;  // the last word whose prefix is <= q: the word holding rank q
#pragma unroll
                for (int step = 16; step > 0; step >>= 1)
                    if (__shfl_sync(IL_FULL, excl, w + step) <= q) w += step;
                unsigned bits = __shfl_sync(IL_FULL, word, w);
                bits &= ~0u << nth_set_bit(bits, q - __shfl_sync(IL_FULL, excl, w));
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    const bool mine = e >= ca && e < cb;
                    // Words with no kept bits left: the warp shuffles the next ones in together.
                    bool need = mine && bits == 0u;
                    while (__ballot_sync(IL_FULL, need)) {
                        const unsigned next = __shfl_sync(IL_FULL, word, (w + 1) & 31);
                        if (need) {
                            ++w;
                            bits = next;
                            need = bits == 0u;
                        }
                    }
                    if (mine) {
                        accumulate(acc, v[e], ((chunk_word + w) << 5) + lowest_bit(bits), tokens, pitch);
                        bits &= bits - 1u;
                    }
                }
                if (chunk_base + kept >= window_end || chunk_word + 32 >= words) break;
                chunk_base += kept;
                chunk_word += 32;
                word = load_word(mrow, chunk_word + lane, stride, cols);
                kept = scan_kept(word, excl);
            }
        }
        write_row(y, acc, tokens, rows, r);
    }
}

template <typename T>
__device__ void nm_decode(const T* __restrict__ x, const T* __restrict__ values,
                          const uint8_t* __restrict__ positions, T* __restrict__ y, int tokens, int rows,
                          int cols, int index_stride, int n, int m, int bits) {
    constexpr int VEC = 16 / sizeof(T);
    const int pitch = padded(cols), lane = threadIdx.x & 31, per_row = cols / m * n;
    const unsigned position_mask = (1u << bits) - 1u;
    stage_x(x, tokens, cols, pitch);
    for (int r = blockIdx.x * IL_WARPS + (threadIdx.x >> 5); r < rows; r += gridDim.x * IL_WARPS) {
        const uint8_t* prow = positions + (size_t)r * index_stride;
        const long long start = (long long)r * per_row, end = start + per_row;
        float acc[IL_MAX_TOKENS] = {0.f, 0.f, 0.f, 0.f};
        for (long long w0 = window_start(values, start); w0 < end; w0 += 32 * VEC) {
            const long long g0 = w0 + VEC * lane;
            const int ea = clamp_to(start - g0, 0, VEC), eb = clamp_to(end - g0, 0, VEC);
            if (g0 + 64 * VEC < end) prefetch_l2(values + g0 + 64 * VEC);
            if (ea >= eb) continue;
            float v[VEC];
            load_chunk<T, VEC>(values, g0, ea, eb, v);
            // Positions of slots sa .. sa + eb - ea - 1: at most 7 + VEC * 7 <= 63 bits.
            const int sa = (int)(g0 + ea - start), bit0 = sa * bits, byte0 = bit0 >> 3;
            const int byte_end = min(((sa + eb - ea) * bits + 7) >> 3, index_stride);
            unsigned long long held = 0;
            for (int b = byte0; b < byte_end; ++b) held |= (unsigned long long)prow[b] << (8 * (b - byte0));
            int shift = bit0 & 7, group = sa / n, in_group = sa % n;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                if (e >= ea && e < eb) {
                    const int p = (int)((held >> shift) & position_mask);
                    if (p < m) accumulate(acc, v[e], group * m + p, tokens, pitch);
                    shift += bits;
                    if (++in_group == n) {
                        in_group = 0;
                        ++group;
                    }
                }
            }
        }
        write_row(y, acc, tokens, rows, r);
    }
}

#define INFER_LINEAR_KERNELS(T, S)                                                                       \
    extern "C" __global__ void __launch_bounds__(IL_THREADS, IL_MIN_BLOCKS) bitmask_decode_##S(          \
        const T* x, const T* values, const uint8_t* mask, const unsigned* row_offsets, T* y, int tokens, \
        int rows, int cols, int stride, unsigned nnz) {                                                  \
        bitmask_decode<T>(x, values, mask, row_offsets, y, tokens, rows, cols, stride, nnz);             \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(IL_THREADS, IL_MIN_BLOCKS) nm_decode_##S(               \
        const T* x, const T* values, const uint8_t* positions, T* y, int tokens, int rows, int cols,     \
        int index_stride, int n, int m, int bits) {                                                      \
        nm_decode<T>(x, values, positions, y, tokens, rows, cols, index_stride, n, m, bits);             \
    }

INFER_LINEAR_KERNELS(float, f32)
INFER_LINEAR_KERNELS(bf16, bf16)
