// Rotary position embedding, Hugging Face "rotate-half" layout.
// x: [tokens, ld] rows; y0 [tokens, heads0, head_dim], y1 [tokens, heads1, head_dim], y2
// [tokens, heads2, head_dim]; inv_freq: [half] (f32, made on the host, half = head_dim/2).
// A token's row holds heads0 heads rotated into y0, then heads1 heads rotated into y1, then
// heads2 heads copied into y2 (a segment with 0 heads, its pointer null, is skipped). Plain
// RoPE is one segment (ld = heads0 * head_dim); the fused q|k|v projection's output
// [tokens, (hq + 2 hkv) head_dim] is three: q and k rotated, v copied, each into its own
// tensor, so RoPE is applied where Q and K are written out of the one GEMM's product.
// Token k sits at p = positions[k] when `positions` is given (generation), else at
// p = pos_offset + k % seq (x is [batch, seq, ...]: training).
//   angle = p * inv_freq[i] (one f32 multiply)
//   y[i] = x[i] c - x[i+half] s;  y[i+half] = x[i+half] c + x[i] s,  c = cos(angle), s = sign*sin(angle)
// sign = -1 gives the inverse rotation (the backward). One block per token: its
// threads first fill cos/sin for the token's position into shared memory [2, half], then
// rotate every head, 8 features (and their 8 partners) per thread and step, moved as 16-byte
// vectors where aligned. Precise sincosf (not __sincosf): angles reach thousands of radians.
#include "common.cuh"

// The token's `heads` heads at x rotated into y with the cos/sin table `trig` [2, half]. A
// thread takes 8 consecutive i of a head and their partners at i + half (count = the 8, or
// fewer at the end of a half that 8 does not divide), moved as 16-byte vectors when `vec`
// (half % 8 == 0 and x, y 16-byte aligned at every head: see rope_rows).
template <typename T>
__device__ __forceinline__ void rotate_heads(const T* x, T* y, int heads, int half, const float* trig, bool vec) {
    const int head_dim = 2 * half, groups = (half + 7) / 8;
    for (int k = threadIdx.x; k < heads * groups; k += blockDim.x) {
        const int h = k / groups, i0 = 8 * (k % groups), count = min(8, half - i0);
        const size_t o = (size_t)h * head_dim + i0;
        float a[8], b[8], lo[8], hi[8];
        load8(x + o, vec, count, a);
        load8(x + o + half, vec, count, b);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float c = e < count ? trig[i0 + e] : 0.f, s = e < count ? trig[half + i0 + e] : 0.f;
            lo[e] = a[e] * c - b[e] * s;
            hi[e] = b[e] * c + a[e] * s;
        }
        store8(y + o, vec, count, lo);
        store8(y + o + half, vec, count, hi);
    }
}

template <typename T>
__device__ void rope_rows(const T* x, int ld, const float* inv_freq, T* y0, int heads0, T* y1, int heads1, T* y2,
                          int heads2, int tokens, int seq, int head_dim, int pos_offset, const unsigned* positions,
                          float sign) {
    extern __shared__ float trig[];  // [2, half]: cos, then sign * sin
    const int token = blockIdx.x;
    if (token >= tokens) return;
    const int half = head_dim / 2;
    const float pos =
        positions != nullptr ? (float)positions[token] : (float)(pos_offset + token % seq);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        // __fmul_rn: never contracted, so the angle is the same f32 product as on the host.
        sincosf(__fmul_rn(pos, inv_freq[i]), &s, &c);
        trig[i] = c;
        trig[half + i] = sign * s;
    }
    __syncthreads();
    // 16-byte moves when every row and head starts 16-byte aligned: the buffers are, and
    // half, ld and therefore every offset below are multiples of 8 elements.
    const bool vec = half % 8 == 0 && ld % 8 == 0 && aligned16(x) && aligned16(y0) && aligned16(y1) && aligned16(y2);
    const T* row = x + (size_t)token * ld;
    if (heads0 > 0) rotate_heads(row, y0 + (size_t)token * heads0 * head_dim, heads0, half, trig, vec);
    row += (size_t)heads0 * head_dim;
    if (heads1 > 0) rotate_heads(row, y1 + (size_t)token * heads1 * head_dim, heads1, half, trig, vec);
    row += (size_t)heads1 * head_dim;
    if (heads2 > 0) {
        T* out = y2 + (size_t)token * heads2 * head_dim;
        const int n = heads2 * head_dim;
        for (int k = 8 * threadIdx.x; k < n; k += 8 * blockDim.x) {
            float v[8];
            load8(row + k, vec, min(8, n - k), v);
            store8(out + k, vec, min(8, n - k), v);
        }
    }
}

#define ROPE_KERNELS(T, S)                                                                          \
    extern "C" __global__ void rope_##S(const T* x, int ld, const float* inv_freq, T* y0, int heads0, \
                                        T* y1, int heads1, T* y2, int heads2, int tokens, int seq,    \
                                        int head_dim, int pos_offset, const unsigned* positions,      \
                                        float sign) {                                                 \
        rope_rows<T>(x, ld, inv_freq, y0, heads0, y1, heads1, y2, heads2, tokens, seq, head_dim,      \
                     pos_offset, positions, sign);                                                    \
    }

ROPE_KERNELS(float, f32)
ROPE_KERNELS(bf16, bf16)
