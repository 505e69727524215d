// SwiGLU on n elements (gate, up, h, dh, dgate, dup: [n]), f32 arithmetic for every dtype:
//   s = 1 / (1 + exp(-g));  h = g * s * up
//   dgate = dh * up * s * (1 + g * (1 - s));  dup = dh * g * s
// Groups of 8 consecutive elements per thread (grid-stride), moved as 16-byte vectors when
// every pointer of the call is 16-byte aligned; backward skips an output whose pointer is null.
#include "common.cuh"

// Precise expf (not __expf): a fast exponential would cost accuracy for no measurable gain
// in a memory-bound kernel.
__device__ __forceinline__ float sigmoidf(float g) { return 1.f / (1.f + expf(-g)); }

template <typename T>
__device__ void swiglu_fwd(const T* gate, const T* up, T* h, size_t n) {
    const bool vec = aligned16(gate) && aligned16(up) && aligned16(h);
    grid_stride8(n, [&](size_t first, int count) {
        float g[8], u[8];
        load8(gate + first, vec, count, g);
        load8(up + first, vec, count, u);
#pragma unroll
        for (int e = 0; e < 8; ++e) g[e] = g[e] * sigmoidf(g[e]) * u[e];
        store8(h + first, vec, count, g);
    });
}

template <typename T>
__device__ void swiglu_bwd(const T* gate, const T* up, const T* dh, T* dgate, T* dup, size_t n) {
    const bool vec = aligned16(gate) && aligned16(up) && aligned16(dh) && aligned16(dgate) && aligned16(dup);
    grid_stride8(n, [&](size_t first, int count) {
        float g[8], u[8], d[8], dg[8], du[8];
        load8(gate + first, vec, count, g);
        load8(up + first, vec, count, u);
        load8(dh + first, vec, count, d);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float s = sigmoidf(g[e]);
            dg[e] = d[e] * u[e] * s * (1.f + g[e] * (1.f - s));
            du[e] = d[e] * g[e] * s;
        }
        if (dgate != nullptr) store8(dgate + first, vec, count, dg);
        if (dup != nullptr) store8(dup + first, vec, count, du);
    });
}

#define SWIGLU_KERNELS(T, S)                                                                    \
    extern "C" __global__ void swiglu_fwd_##S(const T* gate, const T* up, T* h, size_t n) {     \
        swiglu_fwd<T>(gate, up, h, n);                                                          \
    }                                                                                           \
    extern "C" __global__ void swiglu_bwd_##S(const T* gate, const T* up, const T* dh, T* dgate, \
                                              T* dup, size_t n) {                               \
        swiglu_bwd<T>(gate, up, dh, dgate, dup, n);                                             \
    }

SWIGLU_KERNELS(float, f32)
SWIGLU_KERNELS(bf16, bf16)
