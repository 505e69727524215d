// Float conversions on n elements. f32 -> bf16/f16 rounds to nearest even; widening is exact.
#include "common.cuh"
#include <cuda_fp16.h>

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

extern "C" __global__ void cast_f32_bf16(const float* x, bf16* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}
extern "C" __global__ void cast_bf16_f32(const bf16* x, float* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = __bfloat162float(x[i]);
}
extern "C" __global__ void cast_f16_f32(const __half* x, float* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = __half2float(x[i]);
}
extern "C" __global__ void cast_f16_bf16(const __half* x, bf16* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(__half2float(x[i]));
}
extern "C" __global__ void cast_f32_f16(const float* x, __half* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = __float2half_rn(x[i]);
}
extern "C" __global__ void cast_bf16_f16(const bf16* x, __half* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = __float2half_rn(__bfloat162float(x[i]));
}

// f64 conversions (SparseGPT and calibration statistics work in f64). Narrowing to bf16
// goes through f32, exactly as the CPU path (f64 as f32, then bf16::from_f32) does.
extern "C" __global__ void cast_f32_f64(const float* x, double* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = (double)x[i];
}
extern "C" __global__ void cast_bf16_f64(const bf16* x, double* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = (double)__bfloat162float(x[i]);
}
extern "C" __global__ void cast_f64_f32(const double* x, float* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = (float)x[i];
}
extern "C" __global__ void cast_f64_bf16(const double* x, bf16* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn((float)x[i]);
}
// x *= s in f64.
extern "C" __global__ void scale_f64(double* x, double s, size_t n) {
    GRID_STRIDE(i, n) x[i] *= s;
}
