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
// Both kernels: one warp per row, rows grid-strided over the warps of a grid sized to the
// GPU; x is staged once per block in dynamic shared memory as f32 [N][pitch]; the launcher
// sizes the shared memory and refuses x that does not fit (ops::infer_linear then takes its
// expand + GEMM path).
//
// bitmask_decode: the row in segments of 1024 columns (32 mask words, lane l word l):
//   - the warp scans the words' kept counts (each word's first value in the segment, and
//     the segment's total), then copies the segment's values, contiguous in memory, into its
//     own buffer in shared memory with 16-byte loads (512 bytes per warp load; element loads
//     at the row's two ends, zeros past them);
//   - then 256 columns per step, 8 per lane: lane l takes mask byte l of the step, its first
//     value's place from its word's count and the bits below, reads one value per bit from
//     the buffer (kept where the bit is set, the place moving on by the bit) and multiplies
//     them into x's 8 columns (two 16-byte shared loads per token, x [N][pitch = cols
//     rounded up to 256], zero-padded). No search, no vote, no divergence: per 8 columns two
//     shuffles, a popcount, 8 shared loads and selects, 8 FMAs per token (~98 SASS
//     instructions per step at N = 1 on sm_90a, whatever the sparsity);
//   - memory: the next segment's mask words are loaded while a segment is worked through,
//     and at each row's start the warp asks for its next row's mask and values in L2
//     (prefetch_l2), so that a row's reads are L2 hits and a warp keeps a row in flight.
// nm_decode: values are read in 16-byte-aligned windows of 32 * VEC values (VEC = 16 /
//   sizeof(T)); lane l takes the VEC consecutive values of its 16-byte chunk, in one vector
//   load when the whole chunk belongs to the row, reads the <= 8 position bytes of its VEC
//   slots at once (VEC * bits <= 56 bits, so m <= 128) and counts groups as it goes; x is
//   staged with a padding float every 32 columns (column c at c + c/32: lanes read columns
//   about VEC/density apart, which would fall into few banks unpadded); each lane asks for
//   its chunk of the window after next into L2 as it starts a window, and the warp asks for
//   its next row's values and positions in L2 at each row's start (as bitmask_decode).
// Robust to inconsistent input: a row reads only values below min(row_offsets[r + 1], nnz)
// (a mask keeping more bits than the row has values gets zeros for the rest), mask bits past
// cols are dropped, N:M positions >= m are skipped.
#include "common.cuh"

constexpr int IL_THREADS = 512;
constexpr int IL_WARPS = IL_THREADS / 32;
constexpr int IL_MIN_BLOCKS = 2;  // per SM: at most 64 registers a thread (MAX_BLOCKS_PER_SM in cuda.rs)
constexpr int IL_MAX_TOKENS = 4;  // DECODE_MAX_TOKENS in ops/infer_linear/cuda.rs
constexpr unsigned IL_FULL = 0xffffffffu;
// Bitmask columns per segment (32 mask words) and per step (8 per lane): BITMASK_SEGMENT and
// BITMASK_STEP in ops/infer_linear/cuda.rs, which size the shared memory.
constexpr int IL_SEGMENT = 1024;
constexpr int IL_STEP = 256;

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

// Elements of a warp's value buffer: a segment's values and the 16-byte chunks around them.
template <typename T>
__device__ constexpr int segment_buffer() {
    return IL_SEGMENT + 2 * (16 / (int)sizeof(T));
}

// Asks for the bytes [p, p + n) in L2, one 128-byte line per lane and step.
__device__ __forceinline__ void prefetch_range(const uint8_t* p, long long n) {
    for (long long b = 128 * (long long)(threadIdx.x & 31); b < n; b += 32 * 128) prefetch_l2(p + b);
}

template <typename T>
__device__ void bitmask_decode(const T* __restrict__ x, const T* __restrict__ values,
                               const uint8_t* __restrict__ mask, const unsigned* __restrict__ row_offsets,
                               T* __restrict__ y, int tokens, int rows, int cols, int stride, unsigned nnz) {
    constexpr int VEC = 16 / sizeof(T);
    const int pitch = (cols + IL_STEP - 1) / IL_STEP * IL_STEP, lane = threadIdx.x & 31;
    const int words = (cols + 31) >> 5, row_step = gridDim.x * IL_WARPS;
    // x [N][pitch], zeros past cols; then each warp's value buffer (16-byte aligned: pitch
    // is a multiple of 256 floats and the buffer a multiple of 16 bytes).
    for (int t = 0; t < tokens; ++t)
        for (int c = threadIdx.x; c < pitch; c += blockDim.x)
            infer_linear_x[t * pitch + c] = c < cols ? to_f32(x[(size_t)t * cols + c]) : 0.f;
    T* buf = reinterpret_cast<T*>(infer_linear_x + tokens * pitch) + (threadIdx.x >> 5) * segment_buffer<T>();
    __syncthreads();
    for (int r = blockIdx.x * IL_WARPS + (threadIdx.x >> 5); r < rows; r += row_step) {
        const uint8_t* mrow = mask + (size_t)r * stride;
        const long long end = min((long long)row_offsets[r + 1], (long long)nnz);
        const long long start = min((long long)row_offsets[r], end);
        if (r + row_step < rows) {  // the warp's next row on its way into L2
            const int next = r + row_step;
            const long long b = min((long long)row_offsets[next + 1], (long long)nnz);
            const long long a = min((long long)row_offsets[next], b);
            prefetch_range(mask + (size_t)next * stride, stride);
            prefetch_range(reinterpret_cast<const uint8_t*>(values + a), (b - a) * (long long)sizeof(T));
        }
        float acc[IL_MAX_TOKENS] = {0.f, 0.f, 0.f, 0.f};
        long long base = start;  // the segment's first value
        unsigned word = load_word(mrow, lane, stride, cols);
        for (int w0 = 0; w0 < words; w0 += 32) {
            const unsigned next_word = w0 + 32 < words ? load_word(mrow, w0 + 32 + lane, stride, cols) : 0u;
            int excl;  // kept bits of the segment's words before this lane's
            const int total = scan_kept(word, excl);
            // buf[i] = values[first + i] for the 16-byte chunks over [base, base + total),
            // zeros outside [base, end).
            const long long first = window_start(values, base), hi = min(base + total, end);
            for (long long g0 = first + (long long)VEC * lane; g0 < base + total; g0 += 32 * VEC) {
                const int ea = clamp_to(base - g0, 0, VEC), eb = clamp_to(hi - g0, 0, VEC);
                Chunk16<T> c;
                if (ea == 0 && eb == VEC) {
                    c = *reinterpret_cast<const Chunk16<T>*>(values + g0);
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) c.e[e] = e >= ea && e < eb ? values[g0 + e] : from_f32<T>(0.f);
                }
                *reinterpret_cast<Chunk16<T>*>(buf + (g0 - first)) = c;
            }
            __syncwarp();
            const int off = (int)(base - first), seg_cols = min(IL_SEGMENT, cols - 32 * w0);
            for (int s0 = 0; s0 < seg_cols; s0 += IL_STEP) {
                // The lane's 8 columns: byte (lane & 3) of the step's word lane / 4.
                const int q = (s0 >> 5) + (lane >> 2), shift = 8 * (lane & 3);
                const unsigned wq = __shfl_sync(IL_FULL, word, q);
                const unsigned bits = (wq >> shift) & 0xffu;
                // Its values: buf[at] onwards, one per set bit. Every bit reads buf[at] (at most
                // one past the segment's values: inside the buffer) and keeps it only if set.
                int at = off + __shfl_sync(IL_FULL, excl, q) + __popc(wq & ((1u << shift) - 1u));
                float v[8];
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const unsigned keeps = (bits >> e) & 1u;
                    const float value = to_f32(buf[at]);
                    v[e] = keeps ? value : 0.f;
                    at += keeps;
                }
                const float* xc = infer_linear_x + 32 * w0 + s0 + 8 * lane;
#pragma unroll
                for (int t = 0; t < IL_MAX_TOKENS; ++t) {
                    if (t < tokens) {
                        const float4 lo = *reinterpret_cast<const float4*>(xc + t * pitch);
                        const float4 up = *reinterpret_cast<const float4*>(xc + t * pitch + 4);
                        float a = acc[t];
                        a = fmaf(v[0], lo.x, a);
                        a = fmaf(v[1], lo.y, a);
                        a = fmaf(v[2], lo.z, a);
                        a = fmaf(v[3], lo.w, a);
                        a = fmaf(v[4], up.x, a);
                        a = fmaf(v[5], up.y, a);
                        a = fmaf(v[6], up.z, a);
                        a = fmaf(v[7], up.w, a);
                        acc[t] = a;
                    }
                }
            }
            __syncwarp();  // the buffer is rewritten by the next segment
            base += total;
            word = next_word;
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
    const int row_step = gridDim.x * IL_WARPS;
    stage_x(x, tokens, cols, pitch);
    for (int r = blockIdx.x * IL_WARPS + (threadIdx.x >> 5); r < rows; r += row_step) {
        const uint8_t* prow = positions + (size_t)r * index_stride;
        const long long start = (long long)r * per_row, end = start + per_row;
        if (r + row_step < rows) {  // the warp's next row on its way into L2
            const size_t next = (size_t)r + row_step;
            prefetch_range(positions + next * index_stride, index_stride);
            prefetch_range(reinterpret_cast<const uint8_t*>(values + next * per_row), (long long)per_row * sizeof(T));
        }
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
