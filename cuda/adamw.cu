// AdamW update of n trained values (PyTorch's formula, decoupled weight decay):
//   g = grad·gscale (grad f32: the trainer's accumulators);  m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²
//   p = p·(1 − lr·wd) − (lr/bc1)·m / (√v/√bc2 + eps);  param = p (rounded to T)
// `master` (f32) holds p; adamw_f32_inplace updates an f32 parameter that is its own master.
// m, v are f32.
// sum_squares: out[0] += Σ to_f32(x)² over n elements (f64 accumulation, one atomic per block).
//
// Multi-tensor forms: one launch for a whole list of tensors (a 7B step trains ~450), with
// no value read back by the host between the norm and the update:
//   table [count, 6] u64: the device addresses of param, master (unused by the _inplace
//     kernel), m, v, grad (f32), and the tensor's length;
//   chunk_starts [count + 1] u64: tensor t is cut into chunks of MULTI_CHUNK values (its
//     last one partial), numbered chunk_starts[t] .. chunk_starts[t + 1] - 1; a block takes
//     chunks in turn (block-stride) and finds their tensor by binary search.
// multi_sum_squares: sumsq[0] += Σ_t Σ_i grad_t[i]² (f64 per thread, one atomic per block).
// multi_adamw_*: the clip factor from sumsq, as the trainer's CPU path computes it:
//   norm = √sumsq / micro; clip = min(max_norm / (norm + 1e-6), 1) (1 when max_norm ≤ 0);
//   gscale = clip / micro (f64, then f32); nothing at all is written when norm is not finite
//   (the step is skipped); then the update above on every value of every tensor.
#include "common.cuh"

#define MULTI_CHUNK 4096

template <typename T>
__device__ __forceinline__ void adamw_one(size_t i, T* param, float* master, float* m, float* v, const float* grad,
                                          float lr, float b1, float b2, float eps, float wd, float bc1,
                                          float sqrt_bc2, float gscale) {
    const float g = grad[i] * gscale;
    const float mi = b1 * m[i] + (1.f - b1) * g;
    const float vi = b2 * v[i] + (1.f - b2) * g * g;
    float p = master[i] * (1.f - lr * wd);
    p -= (lr / bc1) * mi / (sqrtf(vi) / sqrt_bc2 + eps);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    param[i] = from_f32<T>(p);
}

template <typename T>
__device__ void adamw_step(T* param, float* master, float* m, float* v, const float* grad, size_t n, float lr,
                           float b1, float b2, float eps, float wd, float bc1, float sqrt_bc2, float gscale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        adamw_one<T>(i, param, master, m, v, grad, lr, b1, b2, eps, wd, bc1, sqrt_bc2, gscale);
}

// The tensor of chunk c: the t with chunk_starts[t] <= c < chunk_starts[t + 1].
__device__ __forceinline__ size_t chunk_tensor(const uint64_t* chunk_starts, size_t count, uint64_t c) {
    size_t lo = 0, hi = count;  // chunk_starts[lo] <= c < chunk_starts[hi]
    while (hi - lo > 1) {
        const size_t mid = lo + (hi - lo) / 2;
        if (chunk_starts[mid] <= c) lo = mid; else hi = mid;
    }
    return lo;
}

// Calls f(t, i) for every value i of every tensor t, chunk by chunk (see the header).
template <typename F>
__device__ __forceinline__ void each_value(const uint64_t* table, const uint64_t* chunk_starts, size_t count, F f) {
    const uint64_t chunks = chunk_starts[count];
    for (uint64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
        const size_t t = chunk_tensor(chunk_starts, count, c);
        const uint64_t len = table[6 * t + 5];
        const uint64_t start = (c - chunk_starts[t]) * MULTI_CHUNK;
        const uint64_t end = start + MULTI_CHUNK < len ? start + MULTI_CHUNK : len;
        for (uint64_t i = start + threadIdx.x; i < end; i += blockDim.x) f(t, (size_t)i);
    }
}

extern "C" __global__ void multi_sum_squares(const uint64_t* table, const uint64_t* chunk_starts, size_t count,
                                             double* sumsq) {
    __shared__ float scratch[32];
    double acc = 0.0;
    each_value(table, chunk_starts, count, [&](size_t t, size_t i) {
        const double g = ((const float*)table[6 * t + 4])[i];
        acc += g * g;
    });
    // As in sum_squares: the block's partial sums added in f32.
    const float s = block_sum((float)acc, scratch);
    if (threadIdx.x == 0) atomicAdd(sumsq, (double)s);
}

// The gradient factor of a clipped step, or false when the step is skipped.
__device__ __forceinline__ bool clipped_scale(const double* sumsq, float micro, float max_norm, float* gscale) {
    const double norm = sqrt(*sumsq) / (double)micro;
    if (!isfinite(norm)) return false;
    const double clip = max_norm > 0.f ? fmin((double)max_norm / (norm + 1e-6), 1.0) : 1.0;
    *gscale = (float)(clip / (double)micro);
    return true;
}

template <typename T, bool InPlace>
__device__ void multi_adamw(const uint64_t* table, const uint64_t* chunk_starts, size_t count, const double* sumsq,
                            float micro, float max_norm, float lr, float b1, float b2, float eps, float wd, float bc1,
                            float sqrt_bc2) {
    float gscale;
    if (!clipped_scale(sumsq, micro, max_norm, &gscale)) return;
    each_value(table, chunk_starts, count, [&](size_t t, size_t i) {
        const uint64_t* row = table + 6 * t;
        T* param = (T*)row[0];
        float* master = InPlace ? (float*)row[0] : (float*)row[1];
        adamw_one<T>(i, param, master, (float*)row[2], (float*)row[3], (const float*)row[4], lr, b1, b2, eps, wd,
                     bc1, sqrt_bc2, gscale);
    });
}

template <typename T>
__device__ void sum_squares(const T* x, size_t n, double* out) {
    __shared__ float scratch[32];
    double acc = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double f = to_f32(x[i]);
        acc += f * f;
    }
    // Block partials are summed in f32 after the per-thread f64 loop: a block holds at most
    // 256 partial sums of similar size, so the relative error stays near 1e-7·log2(256).
    const float s = block_sum((float)acc, scratch);
    if (threadIdx.x == 0) atomicAdd(out, (double)s);
}

#define ADAMW_KERNELS(T, S)                                                                                    \
    extern "C" __global__ void adamw_##S(T* param, float* master, float* m, float* v, const float* grad, size_t n, \
                                         float lr, float b1, float b2, float eps, float wd, float bc1,          \
                                         float sqrt_bc2, float gscale) {                                        \
        adamw_step<T>(param, master, m, v, grad, n, lr, b1, b2, eps, wd, bc1, sqrt_bc2, gscale);              \
    }                                                                                                          \
    extern "C" __global__ void sum_squares_##S(const T* x, size_t n, double* out) { sum_squares<T>(x, n, out); }  \
    extern "C" __global__ void multi_adamw_##S(const uint64_t* table, const uint64_t* chunk_starts, size_t count,  \
                                               const double* sumsq, float micro, float max_norm, float lr,        \
                                               float b1, float b2, float eps, float wd, float bc1,                \
                                               float sqrt_bc2) {                                                  \
        multi_adamw<T, false>(table, chunk_starts, count, sumsq, micro, max_norm, lr, b1, b2, eps, wd, bc1,      \
                              sqrt_bc2);                                                                          \
    }

ADAMW_KERNELS(float, f32)
ADAMW_KERNELS(bf16, bf16)

extern "C" __global__ void multi_adamw_f32_inplace(const uint64_t* table, const uint64_t* chunk_starts, size_t count,
                                                   const double* sumsq, float micro, float max_norm, float lr,
                                                   float b1, float b2, float eps, float wd, float bc1,
                                                   float sqrt_bc2) {
    multi_adamw<float, true>(table, chunk_starts, count, sumsq, micro, max_norm, lr, b1, b2, eps, wd, bc1, sqrt_bc2);
}

extern "C" __global__ void adamw_f32_inplace(float* param, float* m, float* v, const float* grad, size_t n, float lr,
                                             float b1, float b2, float eps, float wd, float bc1, float sqrt_bc2,
                                             float gscale) {
    adamw_step<float>(param, param, m, v, grad, n, lr, b1, b2, eps, wd, bc1, sqrt_bc2, gscale);
}
