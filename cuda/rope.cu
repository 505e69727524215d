// Rotary position embedding, Hugging Face "rotate-half" layout.
// x, y: [tokens, heads, head_dim]; inv_freq: [half] (f32, made on the host, half = head_dim/2).
// Token k sits at p = positions[k] when `positions` is given (generation), else at
// p = pos_offset + k % seq (x is [batch, seq, heads, head_dim]: training).
//   angle = p * inv_freq[i] (one f32 multiply)
//   y[i] = x[i] c - x[i+half] s;  y[i+half] = x[i+half] c + x[i] s,  c = cos(angle), s = sign*sin(angle)
// sign = -1 gives the inverse rotation (the backward). One block per token: its
// threads first fill cos/sin for the token's position into shared memory [2, half], then
// rotate every head. Precise sincosf (not __sincosf): angles reach thousands of radians.
#include "common.cuh"

template <typename T>
__device__ void rope_rotate(const T* x, const float* inv_freq, T* y, int tokens, int seq, int heads,
                            int head_dim, int pos_offset, const unsigned* positions, float sign) {
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
    const size_t base = (size_t)token * heads * head_dim;
    for (int k = threadIdx.x; k < heads * half; k += blockDim.x) {
        const int h = k / half, i = k % half;
        const size_t o = base + (size_t)h * head_dim + i;
        const float a = to_f32(x[o]), b = to_f32(x[o + half]);
        const float c = trig[i], s = trig[half + i];
        y[o] = from_f32<T>(a * c - b * s);
        y[o + half] = from_f32<T>(b * c + a * s);
    }
}

#define ROPE_KERNELS(T, S)                                                                        \
    extern "C" __global__ void rope_##S(const T* x, const float* inv_freq, T* y, int tokens,      \
                                        int seq, int heads, int head_dim, int pos_offset,         \
                                        const unsigned* positions, float sign) {                  \
        rope_rotate<T>(x, inv_freq, y, tokens, seq, heads, head_dim, pos_offset, positions,       \
                       sign);                                                                     \
    }

ROPE_KERNELS(float, f32)
ROPE_KERNELS(bf16, bf16)
