// Elementwise arithmetic on n elements, f32 accumulation:
//   add: out = a + b     mul: out = a * b     scale: out = a * s     add_assign: a += b
// Each thread takes groups of 8 consecutive elements (grid-stride), moved as 16-byte vectors
// when every pointer of the call is 16-byte aligned, element by element otherwise and in the
// last partial group.
#include "common.cuh"

// out = op(a, b) on n elements (b unused by unary ops).
template <typename T, typename Op>
__device__ __forceinline__ void ew_map(const T* a, const T* b, T* out, size_t n, Op op) {
    const bool vec = aligned16(a) && (b == nullptr || aligned16(b)) && aligned16(out);
    grid_stride8(n, [&](size_t first, int count) {
        float x[8], y[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        load8(a + first, vec, count, x);
        if (b != nullptr) load8(b + first, vec, count, y);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = op(x[e], y[e]);
        store8(out + first, vec, count, x);
    });
}

#define EW_KERNELS(T, S)                                                                              \
    extern "C" __global__ void add_##S(const T* a, const T* b, T* out, size_t n) {                     \
        ew_map<T>(a, b, out, n, [](float x, float y) { return x + y; });                               \
    }                                                                                                 \
    extern "C" __global__ void mul_##S(const T* a, const T* b, T* out, size_t n) {                     \
        ew_map<T>(a, b, out, n, [](float x, float y) { return x * y; });                               \
    }                                                                                                 \
    extern "C" __global__ void scale_##S(const T* a, float s, T* out, size_t n) {                      \
        ew_map<T>(a, (const T*)nullptr, out, n, [s](float x, float) { return x * s; });                \
    }                                                                                                 \
    extern "C" __global__ void add_assign_##S(T* a, const T* b, size_t n) {                            \
        ew_map<T>(a, b, a, n, [](float x, float y) { return x + y; });                                 \
    }

EW_KERNELS(float, f32)
EW_KERNELS(bf16, bf16)
