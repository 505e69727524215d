// RMSNorm forward and backward. x, y, dy, dx: [rows, dim]; w, dw: [dim].
//   r = 1 / sqrt(mean_j x_j^2 + eps);  y_j = x_j * r * w_j
//   dx_j = r * (dy_j w_j - x_j r * mean_k(dy_k w_k x_k r))
//   dw_j = sum_rows dy_j * x_j * r   (partials per row chunk, then summed: deterministic)
// Fused with the residual stream (either pointer may be null):
//   forward with `res` [rows, dim]: x is replaced by x + res rounded to T, written to `sum`
//     (the residual add and the norm of its result in one pass);
//   backward with `pending` [rows, dim]: dx_j = pending_j + (the above), rounded once (the
//     gradient the residual stream already holds for x, folded in instead of added after).
// One block of 256 threads per row; f32 accumulation for every dtype. The row passes take 8
// consecutive elements per thread and step, moved as 16-byte vectors when dim % 8 == 0 and the
// buffers are 16-byte aligned.
#include "common.cuh"

// v[e] = x[e] (+ res[e], rounded to T when res is given) for the 8 columns from j.
template <typename T>
__device__ __forceinline__ void load_input(const T* xr, const T* rr, int j, bool vec, int count, float v[8]) {
    load8(xr + j, vec, count, v);
    if (rr == nullptr) return;
    float add[8];
    load8(rr + j, vec, count, add);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = to_f32(from_f32<T>(v[e] + add[e]));
}

template <typename T>
__device__ void rms_norm_fwd(const T* x, const T* res, const T* w, T* sum, T* y, int rows, int dim, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const size_t off = (size_t)row * dim;
    const T* xr = x + off;
    const T* rr = res == nullptr ? nullptr : res + off;
    T* yr = y + off;
    const bool vec = dim % 8 == 0 && aligned16(x) && aligned16(w) && aligned16(y) &&
                     (res == nullptr || (aligned16(res) && aligned16(sum)));
    float ss = 0.f;
    for (int j = 8 * threadIdx.x; j < dim; j += 8 * blockDim.x) {
        const int count = min(8, dim - j);
        float v[8];
        load_input(xr, rr, j, vec, count, v);
        if (rr != nullptr) store8(sum + off + j, vec, count, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
    }
    ss = block_sum(ss, scratch);
    const float r = rsqrtf(ss / dim + eps);
    // The second pass reads the normed input back: x, or the sum this thread has written.
    const T* in = rr == nullptr ? xr : sum + off;
    for (int j = 8 * threadIdx.x; j < dim; j += 8 * blockDim.x) {
        const int count = min(8, dim - j);
        float v[8], g[8];
        load8(in + j, vec, count, v);
        load8(w + j, vec, count, g);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = v[e] * r * g[e];
        store8(yr + j, vec, count, v);
    }
}

// dx for one row per block; also writes r (the row's inverse RMS) for the dw kernel.
template <typename T>
__device__ void rms_norm_bwd_dx(const T* x, const T* w, const T* dy, const T* pending, T* dx, float* rstd,
                                int rows, int dim, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const T* xr = x + (size_t)row * dim;
    const T* dyr = dy + (size_t)row * dim;
    const bool vec = dim % 8 == 0 && aligned16(x) && aligned16(w) && aligned16(dy) && aligned16(dx) &&
                     aligned16(pending);
    // x, dy and w at columns j .. j + count of this row (both passes read the three).
    auto load = [&](int j, int count, float xv[8], float dv[8], float g[8]) {
        load8(xr + j, vec, count, xv);
        load8(dyr + j, vec, count, dv);
        load8(w + j, vec, count, g);
    };
    float ss = 0.f, dot = 0.f;
    for (int j = 8 * threadIdx.x; j < dim; j += 8 * blockDim.x) {
        const int count = min(8, dim - j);
        float xv[8], dv[8], g[8];
        load(j, count, xv, dv, g);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            ss += xv[e] * xv[e];
            dot += dv[e] * g[e] * xv[e];
        }
    }
    ss = block_sum(ss, scratch);
    dot = block_sum(dot, scratch);
    const float r = rsqrtf(ss / dim + eps);
    const float c = dot * r * r * r / dim;
    if (threadIdx.x == 0) rstd[row] = r;
    if (dx == nullptr) return;
    T* dxr = dx + (size_t)row * dim;
    const T* pr = pending == nullptr ? nullptr : pending + (size_t)row * dim;
    for (int j = 8 * threadIdx.x; j < dim; j += 8 * blockDim.x) {
        const int count = min(8, dim - j);
        float xv[8], dv[8], g[8], p[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        load(j, count, xv, dv, g);
        if (pr != nullptr) load8(pr + j, vec, count, p);
#pragma unroll
        for (int e = 0; e < 8; ++e) dv[e] = p[e] + (r * dv[e] * g[e] - c * xv[e]);
        store8(dxr + j, vec, count, dv);
    }
}

// partial[chunk, j] = sum over rows of chunk (rows_per_chunk rows) of dy * x * r.
// Grid: (ceil(dim / blockDim.x), chunks). Threads of a warp read consecutive columns.
template <typename T>
__device__ void rms_norm_bwd_dw_partial(const T* x, const T* dy, const float* rstd, float* partial,
                                        int rows, int dim, int rows_per_chunk) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (j >= dim) return;
    const int r0 = chunk * rows_per_chunk;
    const int r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.f;
    for (int r = r0; r < r1; ++r)
        acc += to_f32(dy[(size_t)r * dim + j]) * to_f32(x[(size_t)r * dim + j]) * rstd[r];
    partial[(size_t)chunk * dim + j] = acc;
}

// dw[j] = sum_chunk partial[chunk, j]
template <typename T>
__device__ void rms_norm_bwd_dw_reduce(const float* partial, T* dw, int chunks, int dim) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    float acc = 0.f;
    for (int c = 0; c < chunks; ++c) acc += partial[(size_t)c * dim + j];
    dw[j] = from_f32<T>(acc);
}

#define RMS_NORM_KERNELS(T, S)                                                                  \
    extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* res, const T* w, T* sum, T* y, \
                                                int rows, int dim, float eps) {                 \
        rms_norm_fwd<T>(x, res, w, sum, y, rows, dim, eps);                                     \
    }                                                                                           \
    extern "C" __global__ void rms_norm_bwd_dx_##S(const T* x, const T* w, const T* dy,          \
                                                   const T* pending, T* dx, float* rstd,        \
                                                   int rows, int dim, float eps) {              \
        rms_norm_bwd_dx<T>(x, w, dy, pending, dx, rstd, rows, dim, eps);                        \
    }                                                                                           \
    extern "C" __global__ void rms_norm_bwd_dw_partial_##S(const T* x, const T* dy,             \
                                                           const float* rstd, float* partial,   \
                                                           int rows, int dim, int rpc) {        \
        rms_norm_bwd_dw_partial<T>(x, dy, rstd, partial, rows, dim, rpc);                       \
    }                                                                                           \
    extern "C" __global__ void rms_norm_bwd_dw_reduce_##S(const float* partial, T* dw,          \
                                                          int chunks, int dim) {                \
        rms_norm_bwd_dw_reduce<T>(partial, dw, chunks, dim);                                    \
    }

RMS_NORM_KERNELS(float, f32)
RMS_NORM_KERNELS(bf16, bf16)
