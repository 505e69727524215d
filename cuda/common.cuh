// Shared helpers for our kernels: f32 <-> bf16 conversion (round to nearest even, like
// half::bf16::from_f32 on the CPU), 16-byte moves of 8 elements, warp and block reductions.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// Eight consecutive elements, moved as 16 bytes (bf16) or twice 16 bytes (f32).
template <typename T>
struct alignas(16) Pack8 {
    T v[8];
};

// Whether p is 16-byte aligned: packs at multiples of 8 elements from it move as vectors.
__device__ __forceinline__ bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

// out[e] = p[e] for e < count (≤ 8), as f32; one vector load when `vec` and count == 8.
template <typename T>
__device__ __forceinline__ void load8(const T* p, bool vec, int count, float out[8]) {
    if (vec && count == 8) {
        const Pack8<T> k = *reinterpret_cast<const Pack8<T>*>(p);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = to_f32(k.v[e]);
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = e < count ? to_f32(p[e]) : 0.f;
    }
}

// p[e] = in[e] rounded to T for e < count (≤ 8); one vector store when `vec` and count == 8.
template <typename T>
__device__ __forceinline__ void store8(T* p, bool vec, int count, const float in[8]) {
    if (vec && count == 8) {
        Pack8<T> k;
#pragma unroll
        for (int e = 0; e < 8; ++e) k.v[e] = from_f32<T>(in[e]);
        *reinterpret_cast<Pack8<T>*>(p) = k;
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e)
            if (e < count) p[e] = from_f32<T>(in[e]);
    }
}

// Grid-stride loop over n elements in groups of 8 consecutive ones: f(first, count) with
// first a multiple of 8 and count = min(8, n - first).
template <typename F>
__device__ __forceinline__ void grid_stride8(size_t n, F f) {
    const size_t step = (size_t)gridDim.x * blockDim.x * 8;
    for (size_t first = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) * 8; first < n; first += step)
        f(first, (int)(n - first < 8 ? n - first : 8));
}

// A hint to bring the 128-byte line holding p into L2 (no register waits for it; p must lie
// in an allocation). No-op where this source runs on the CPU (tests/cuda_on_cpu).
__device__ __forceinline__ void prefetch_l2(const void* p) {
#if defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
    (void)p;
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 floats.
// blockDim.x must be a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(r);
}

// Max over the block; every thread gets the result.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(r);
}
