// SwiGLU on n elements (gate, up, h, dh, dgate, dup: [n]), f32 arithmetic for every dtype:
//   s = 1 / (1 + exp(-g));  h = g * s * up
//   dgate = dh * up * s * (1 + g * (1 - s));  dup = dh * g * s
// Grid-stride loops; backward skips an output whose pointer is null.
#include "common.cuh"

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// Precise expf (not __expf): a fast exponential would cost accuracy for no measurable gain
// in a memory-bound kernel.
__device__ __forceinline__ float sigmoidf(float g) { return 1.f / (1.f + expf(-g)); }

template <typename T>
__device__ void swiglu_fwd(const T* gate, const T* up, T* h, size_t n) {
    GRID_STRIDE(i, n) {
        const float g = to_f32(gate[i]);
        h[i] = from_f32<T>(g * sigmoidf(g) * to_f32(up[i]));
    }
}

template <typename T>
__device__ void swiglu_bwd(const T* gate, const T* up, const T* dh, T* dgate, T* dup, size_t n) {
    GRID_STRIDE(i, n) {
        const float g = to_f32(gate[i]), d = to_f32(dh[i]);
        const float s = sigmoidf(g);
        if (dgate != nullptr) dgate[i] = from_f32<T>(d * to_f32(up[i]) * s * (1.f + g * (1.f - s)));
        if (dup != nullptr) dup[i] = from_f32<T>(d * g * s);
    }
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
