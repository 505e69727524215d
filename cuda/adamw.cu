// AdamW update of n trained values (PyTorch's formula, decoupled weight decay):
//   g = grad·gscale (grad f32: the trainer's accumulators);  m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²
//   p = p·(1 − lr·wd) − (lr/bc1)·m / (√v/√bc2 + eps);  param = p (rounded to T)
// `master` (f32) holds p; adamw_f32_inplace updates an f32 parameter that is its own master.
// m, v are f32.
// sum_squares: out[0] += Σ to_f32(x)² over n elements (f64 accumulation, one atomic per block).
#include "common.cuh"

template <typename T>
__device__ void adamw_step(T* param, float* master, float* m, float* v, const float* grad, size_t n, float lr,
                           float b1, float b2, float eps, float wd, float bc1, float sqrt_bc2, float gscale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
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
    extern "C" __global__ void sum_squares_##S(const T* x, size_t n, double* out) { sum_squares<T>(x, n, out); }

ADAMW_KERNELS(float, f32)
ADAMW_KERNELS(bf16, bf16)

extern "C" __global__ void adamw_f32_inplace(float* param, float* m, float* v, const float* grad, size_t n, float lr,
                                             float b1, float b2, float eps, float wd, float bc1, float sqrt_bc2,
                                             float gscale) {
    adamw_step<float>(param, param, m, v, grad, n, lr, b1, b2, eps, wd, bc1, sqrt_bc2, gscale);
}
