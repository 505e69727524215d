// Elementwise arithmetic on n elements, f32 accumulation:
//   add: out = a + b     mul: out = a * b     scale: out = a * s     add_assign: a += b
#include "common.cuh"

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

template <typename T>
__device__ void ew_add(const T* a, const T* b, T* out, size_t n) {
    GRID_STRIDE(i, n) out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}
template <typename T>
__device__ void ew_mul(const T* a, const T* b, T* out, size_t n) {
    GRID_STRIDE(i, n) out[i] = from_f32<T>(to_f32(a[i]) * to_f32(b[i]));
}
template <typename T>
__device__ void ew_scale(const T* a, float s, T* out, size_t n) {
    GRID_STRIDE(i, n) out[i] = from_f32<T>(to_f32(a[i]) * s);
}
template <typename T>
__device__ void ew_add_assign(T* a, const T* b, size_t n) {
    GRID_STRIDE(i, n) a[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

#define EW_KERNELS(T, S)                                                                              \
    extern "C" __global__ void add_##S(const T* a, const T* b, T* out, size_t n) { ew_add<T>(a, b, out, n); } \
    extern "C" __global__ void mul_##S(const T* a, const T* b, T* out, size_t n) { ew_mul<T>(a, b, out, n); } \
    extern "C" __global__ void scale_##S(const T* a, float s, T* out, size_t n) { ew_scale<T>(a, s, out, n); } \
    extern "C" __global__ void add_assign_##S(T* a, const T* b, size_t n) { ew_add_assign<T>(a, b, n); }

EW_KERNELS(float, f32)
EW_KERNELS(bf16, bf16)
