// Cross-entropy (fused log-softmax + NLL). logits, dlogits: [rows, vocab]; targets, lse,
// loss: [rows]; t = targets[row], t >= vocab means "ignored" (the host has already rejected
// every such t other than IGNORE_INDEX = 0xFFFFFFFF).
//   forward:  lse = log sum_j exp(x_j) (online max/sum in f32, one pass over the row);
//             loss = lse - x_t, or 0 for an ignored row. The host sums loss in f64.
//   backward: dx_j = g / count * (exp(x_j - lse) - [j == t]), or 0 for an ignored row;
//             g is read from device memory (grad[0]), 1/count comes from the host.
// One block per row (vocab up to ~128k), f32 arithmetic for every dtype.
#include "common.cuh"

// Merges the running (max, sum of exp(x - max)) pair (m, s) with (m2, s2). A pair with
// m = -inf holds no element and contributes nothing (avoids -inf - -inf = NaN).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return;
    s = (m == -INFINITY ? 0.f : s * expf(m - mx)) + (m2 == -INFINITY ? 0.f : s2 * expf(m2 - mx));
    m = mx;
}

// log sum exp over the block's (m, s) pairs; every thread gets the result.
// blockDim.x must be a multiple of 32 (at most 1024).
__device__ float block_logsumexp(float m, float s) {
    __shared__ float warp_m[32], warp_s[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) {
        warp_m[warp] = m;
        warp_s[warp] = s;
    }
    __syncthreads();
    m = lane < nwarps ? warp_m[lane] : -INFINITY;
    s = lane < nwarps ? warp_s[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    return m + logf(s);
}

template <typename T>
__device__ void ce_fwd(const T* logits, const uint32_t* targets, float* lse, float* loss, int rows,
                       int vocab) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = logits + (size_t)row * vocab;
    float m = -INFINITY, s = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float v = to_f32(x[j]);
        if (v > m) {
            s = (m == -INFINITY ? 0.f : s * expf(m - v)) + 1.f;
            m = v;
        } else if (v != -INFINITY) {  // -inf adds nothing; skipping it avoids -inf - -inf
            s += expf(v - m);
        }
    }
    const float row_lse = block_logsumexp(m, s);
    if (threadIdx.x == 0) {
        const uint32_t t = targets[row];
        lse[row] = row_lse;
        loss[row] = t < (uint32_t)vocab ? row_lse - to_f32(x[t]) : 0.f;
    }
}

template <typename T>
__device__ void ce_bwd(const T* logits, const uint32_t* targets, const float* lse, const float* grad,
                       float inv_count, T* dlogits, int rows, int vocab) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = logits + (size_t)row * vocab;
    T* dx = dlogits + (size_t)row * vocab;
    const uint32_t t = targets[row];
    if (t >= (uint32_t)vocab) {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) dx[j] = from_f32<T>(0.f);
        return;
    }
    const float scale = grad[0] * inv_count, row_lse = lse[row];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float p = expf(to_f32(x[j]) - row_lse);
        dx[j] = from_f32<T>(scale * (p - (j == (int)t ? 1.f : 0.f)));
    }
}

#define CE_KERNELS(T, S)                                                                        \
    extern "C" __global__ void cross_entropy_fwd_##S(const T* logits, const uint32_t* targets,  \
                                                     float* lse, float* loss, int rows,         \
                                                     int vocab) {                               \
        ce_fwd<T>(logits, targets, lse, loss, rows, vocab);                                     \
    }                                                                                           \
    extern "C" __global__ void cross_entropy_bwd_##S(const T* logits, const uint32_t* targets,  \
                                                     const float* lse, const float* grad,       \
                                                     float inv_count, T* dlogits, int rows,     \
                                                     int vocab) {                               \
        ce_bwd<T>(logits, targets, lse, grad, inv_count, dlogits, rows, vocab);                 \
    }

CE_KERNELS(float, f32)
CE_KERNELS(bf16, bf16)
