// Causal self-attention with grouped KV heads (GQA), f32 math for f32 and bf16 tensors.
//   q, o, do, dq: [B, T, Hq, D]; k, v, dk, dv: [B, T, Hkv, D]; lse, delta: [B, Hq, T] f32.
// Query head h reads kv head h / (Hq / Hkv); c = 1/sqrt(D); query t sees keys u <= t.
//   s_tu = c q_t.k_u,  lse_t = log sum_u e^{s_tu},  p_tu = e^{s_tu - lse_t},  o_t = sum_u p_tu v_u
//   delta_t = do_t.o_t,  ds_tu = p_tu (do_t.v_u - delta_t)
//   dq_t = c sum_u ds_tu k_u,  dk_u = c sum_{t, group heads} ds_tu q_t,  dv_u = sum_{t, group heads} p_tu do_t
// No T x T matrix is ever stored: blocks hold one tile of TILE rows fixed and stream tiles of
// TILE rows of the other side through shared memory (f32 [TILE][DMAX], DMAX = 64 or 128 >= D,
// zero beyond D and T). Exponentials are base 2 on scores pre-multiplied by log2(e).
//
// Every kernel but delta runs 128 threads = 4 warps; warp w owns rows 8w .. 8w+7 of the fixed
// tile. Two phases alternate:
//   dot phase: lane l takes row l of the streamed tile (float4 reads, swizzled so the 32 rows
//              hit distinct banks) against the warp's 8 fixed rows (float4 broadcasts);
//   sum phase: lane l owns columns l, l+32, ... of the accumulators; the per-row weights from
//              the dot phase are broadcast with shuffles, the streamed rows read by column.
// Kernels (grid.y = batch x heads; causal tiles only):
//   attention_fwd_*:       query tile fixed, key tiles 0 .. diagonal; online softmax; o, lse.
//   attention_bwd_delta_*: one warp per (b, t, h): delta.
//   attention_bwd_dq_*:    query tile fixed, key tiles 0 .. diagonal, p recomputed from lse.
//   attention_bwd_dkdv_*:  key tile of kv head g fixed; query tiles from the diagonal on, for
//                          every query head of g's group. Deterministic, no atomics.
//
// The tensor-core path (ops/attention/cuda_gemm.rs) instead forms the scores of a chunk of
// heads with cuBLAS GEMMs and runs two row kernels between them, one warp per row (head i of
// the chunk, query t) of s, p [heads, T, T] (row-major, row (i, t) at (i T + t) T):
//   attention_probs_*:   p_tu = e^{s_tu - lse_t} for u <= t, 0 for u > t, from the scaled
//                        scores s (f32); lse_t = log sum_{u<=t} e^{s_tu} is computed and
//                        written, or (recompute != 0) read, at lse[lse_at + i lse_stride + t];
//   attention_dscores_*: ds_tu = p_tu (dp_tu - delta_t) for u <= t, written over p (entries
//                        u > t stay 0); dp [heads, T, T] f32, delta indexed like lse.
#include "common.cuh"

constexpr int TILE = 32;                              // rows of every tile
constexpr int THREADS = 128;                          // 4 warps
constexpr int WARP_ROWS = TILE / (THREADS / 32);      // fixed rows per warp: 8
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
constexpr unsigned FULL = 0xffffffffu;

// Tiles live in dynamic shared memory (the launcher sizes it: 3 or 4 tiles of TILE x DMAX f32).
extern __shared__ float4 attention_smem[];

// Position of element (r, d) in a swizzled [TILE][DMAX] tile: float4 column d/4 of row r sits at
// column (d/4) ^ (r % 8). Reading float4 column c of rows 0..31, or 32 consecutive d of one row,
// then touches distinct banks (DMAX/4 is a multiple of 8).
template <int DMAX>
__device__ __forceinline__ int swizzled(int r, int d) {
    return r * DMAX + (((d >> 2) ^ (r & 7)) << 2) + (d & 3);
}

// tile[r][d] = src[(r0 + r) * row_stride + d] as f32 for r0 + r < T and d < D, else 0.
// src points at row 0 of one head in one batch entry of a [B, T, H, D] tensor.
template <typename T, int DMAX, bool SWIZZLE>
__device__ __forceinline__ void load_tile(float* tile, const T* src, int r0, int seq,
                                          size_t row_stride, int D) {
    static_assert(TILE * DMAX % THREADS == 0, "every thread runs the same number of iterations");
#pragma unroll 4
    for (int e = threadIdx.x; e < TILE * DMAX; e += THREADS) {
        const int r = e / DMAX, d = e % DMAX;
        float x = 0.f;
        if (r0 + r < seq && d < D) x = to_f32(src[(size_t)(r0 + r) * row_stride + d]);
        tile[SWIZZLE ? swizzled<DMAX>(r, d) : r * DMAX + d] = x;
    }
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
    return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, acc))));
}

// One block per (query tile, b * Hq + h); dynamic shared memory: 3 tiles.
template <typename T, int DMAX>
__device__ void attention_fwd(const T* __restrict__ q, const T* __restrict__ k,
                              const T* __restrict__ v, T* __restrict__ o, float* __restrict__ lse,
                              int seq, int Hq, int Hkv, int D, float scale_log2) {
    constexpr int NCH = DMAX / 32, D4 = DMAX / 4;
    float* qs = reinterpret_cast<float*>(attention_smem);  // [TILE][DMAX] query rows, plain
    float* ks = qs + TILE * DMAX;                            // [TILE][DMAX] keys, swizzled
    float* vs = ks + TILE * DMAX;                            // [TILE][DMAX] values, plain
    const float4* qs4 = reinterpret_cast<const float4*>(qs);
    const float4* ks4 = reinterpret_cast<const float4*>(ks);
    const int lane = threadIdx.x & 31, row0 = (threadIdx.x >> 5) * WARP_ROWS;
    const int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * TILE;  // longest rows start first
    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const T* k_head = k + (size_t)b * seq * kv_stride + (size_t)g * D;
    const T* v_head = v + (size_t)b * seq * kv_stride + (size_t)g * D;
    load_tile<T, DMAX, false>(qs, q + (size_t)b * seq * q_stride + (size_t)h * D, q0, seq, q_stride, D);

    float m[WARP_ROWS], l[WARP_ROWS], acc[WARP_ROWS][NCH];  // l: this lane's keys only
#pragma unroll
    for (int r = 0; r < WARP_ROWS; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int n = 0; n < NCH; ++n) acc[r][n] = 0.f;
    }
    const int nd4 = (D + 3) >> 2;
    for (int k0 = 0; k0 <= q0; k0 += TILE) {
        __syncthreads();  // the previous key tile is no longer read
        load_tile<T, DMAX, true>(ks, k_head, k0, seq, kv_stride, D);
        load_tile<T, DMAX, false>(vs, v_head, k0, seq, kv_stride, D);
        __syncthreads();
        float s[WARP_ROWS];
#pragma unroll
        for (int r = 0; r < WARP_ROWS; ++r) s[r] = 0.f;
        for (int c = 0; c < nd4; ++c) {
            const float4 key = ks4[lane * D4 + (c ^ (lane & 7))];
#pragma unroll
            for (int r = 0; r < WARP_ROWS; ++r) s[r] = dot4(qs4[(row0 + r) * D4 + c], key, s[r]);
        }
#pragma unroll
        for (int r = 0; r < WARP_ROWS; ++r) {
            const float x = k0 + lane <= q0 + row0 + r ? s[r] * scale_log2 : -INFINITY;
            // Key k0 <= q0 is visible to every row, so m_new is finite and alpha never NaN.
            const float m_new = fmaxf(m[r], warp_max(x));
            const float alpha = exp2f(m[r] - m_new);
            s[r] = exp2f(x - m_new);
            l[r] = l[r] * alpha + s[r];
            m[r] = m_new;
#pragma unroll
            for (int n = 0; n < NCH; ++n) acc[r][n] *= alpha;
        }
#pragma unroll 4
        for (int j = 0; j < TILE; ++j) {
            float vj[NCH];
#pragma unroll
            for (int n = 0; n < NCH; ++n) vj[n] = vs[j * DMAX + lane + 32 * n];
#pragma unroll
            for (int r = 0; r < WARP_ROWS; ++r) {
                const float pj = __shfl_sync(FULL, s[r], j);
#pragma unroll
                for (int n = 0; n < NCH; ++n) acc[r][n] = fmaf(pj, vj[n], acc[r][n]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < WARP_ROWS; ++r) {
        const float l_sum = warp_sum(l[r]);
        const int row = q0 + row0 + r;
        if (row >= seq) continue;
        T* o_row = o + ((size_t)b * seq + row) * q_stride + (size_t)h * D;
        const float inv = 1.f / l_sum;
#pragma unroll
        for (int n = 0; n < NCH; ++n) {
            const int d = lane + 32 * n;
            if (d < D) o_row[d] = from_f32<T>(acc[r][n] * inv);
        }
        if (lane == 0) lse[(size_t)bh * seq + row] = (m[r] + log2f(l_sum)) * LN2;
    }
}

// delta[b, h, t] = do[b, t, h, :] . o[b, t, h, :]; one warp per (b, t, h), any block size
// that is a multiple of 32.
template <typename T>
__device__ void attention_bwd_delta(const T* __restrict__ o, const T* __restrict__ d_o,
                                    float* __restrict__ delta, int batch, int seq, int Hq, int D) {
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // (b*T + t)*Hq + h
    const int lane = threadIdx.x & 31;
    if (row >= (size_t)batch * seq * Hq) return;  // the whole warp leaves together
    float acc = 0.f;
    for (int d = lane; d < D; d += 32) acc = fmaf(to_f32(o[row * D + d]), to_f32(d_o[row * D + d]), acc);
    acc = warp_sum(acc);
    if (lane == 0) {
        const size_t h = row % Hq, t = (row / Hq) % seq, b = row / ((size_t)Hq * seq);
        delta[(b * Hq + h) * seq + t] = acc;
    }
}

// One block per (query tile, b * Hq + h); dynamic shared memory: 4 tiles.
template <typename T, int DMAX>
__device__ void attention_bwd_dq(const T* __restrict__ q, const T* __restrict__ k,
                                 const T* __restrict__ v, const T* __restrict__ d_o,
                                 const float* __restrict__ lse, const float* __restrict__ delta,
                                 T* __restrict__ dq, int seq, int Hq, int Hkv, int D,
                                 float scale_log2, float scale) {
    constexpr int NCH = DMAX / 32, D4 = DMAX / 4;
    float* qs = reinterpret_cast<float*>(attention_smem);  // [TILE][DMAX] query rows, plain
    float* dos = qs + TILE * DMAX;                           // [TILE][DMAX] do rows, plain
    float* ks = dos + TILE * DMAX;                           // [TILE][DMAX] keys, swizzled
    float* vs = ks + TILE * DMAX;                            // [TILE][DMAX] values, swizzled
    const float4* qs4 = reinterpret_cast<const float4*>(qs);
    const float4* dos4 = reinterpret_cast<const float4*>(dos);
    const float4* ks4 = reinterpret_cast<const float4*>(ks);
    const float4* vs4 = reinterpret_cast<const float4*>(vs);
    const int lane = threadIdx.x & 31, row0 = (threadIdx.x >> 5) * WARP_ROWS;
    const int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * TILE;  // longest rows start first
    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const size_t q_head = (size_t)b * seq * q_stride + (size_t)h * D;
    const T* k_head = k + (size_t)b * seq * kv_stride + (size_t)g * D;
    const T* v_head = v + (size_t)b * seq * kv_stride + (size_t)g * D;
    load_tile<T, DMAX, false>(qs, q + q_head, q0, seq, q_stride, D);
    load_tile<T, DMAX, false>(dos, d_o + q_head, q0, seq, q_stride, D);

    float lse2[WARP_ROWS], dl[WARP_ROWS], acc[WARP_ROWS][NCH];
#pragma unroll
    for (int r = 0; r < WARP_ROWS; ++r) {
        const int row = q0 + row0 + r;
        lse2[r] = row < seq ? lse[(size_t)bh * seq + row] * LOG2E : 0.f;
        dl[r] = row < seq ? delta[(size_t)bh * seq + row] : 0.f;
#pragma unroll
        for (int n = 0; n < NCH; ++n) acc[r][n] = 0.f;
    }
    const int nd4 = (D + 3) >> 2;
    for (int k0 = 0; k0 <= q0; k0 += TILE) {
        __syncthreads();  // the previous key tile is no longer read
        load_tile<T, DMAX, true>(ks, k_head, k0, seq, kv_stride, D);
        load_tile<T, DMAX, true>(vs, v_head, k0, seq, kv_stride, D);
        __syncthreads();
        float s[WARP_ROWS], dp[WARP_ROWS];
#pragma unroll
        for (int r = 0; r < WARP_ROWS; ++r) s[r] = dp[r] = 0.f;
        // Unrolled by 2 only: deeper unrolling makes ptxas spill in the D <= 64 variant.
#pragma unroll 2
        for (int c = 0; c < nd4; ++c) {
            const float4 key = ks4[lane * D4 + (c ^ (lane & 7))];
            const float4 val = vs4[lane * D4 + (c ^ (lane & 7))];
#pragma unroll
            for (int r = 0; r < WARP_ROWS; ++r) {
                s[r] = dot4(qs4[(row0 + r) * D4 + c], key, s[r]);
                dp[r] = dot4(dos4[(row0 + r) * D4 + c], val, dp[r]);
            }
        }
#pragma unroll
        for (int r = 0; r < WARP_ROWS; ++r) {
            const int row = q0 + row0 + r;
            const bool visible = row < seq && k0 + lane <= row;
            s[r] = visible ? exp2f(s[r] * scale_log2 - lse2[r]) * (dp[r] - dl[r]) : 0.f;  // ds
        }
#pragma unroll 4
        for (int j = 0; j < TILE; ++j) {
            float kj[NCH];
#pragma unroll
            for (int n = 0; n < NCH; ++n) kj[n] = ks[swizzled<DMAX>(j, lane + 32 * n)];
#pragma unroll
            for (int r = 0; r < WARP_ROWS; ++r) {
                const float dsj = __shfl_sync(FULL, s[r], j);
#pragma unroll
                for (int n = 0; n < NCH; ++n) acc[r][n] = fmaf(dsj, kj[n], acc[r][n]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < WARP_ROWS; ++r) {
        const int row = q0 + row0 + r;
        if (row >= seq) continue;
        T* dq_row = dq + ((size_t)b * seq + row) * q_stride + (size_t)h * D;
#pragma unroll
        for (int n = 0; n < NCH; ++n) {
            const int d = lane + 32 * n;
            if (d < D) dq_row[d] = from_f32<T>(acc[r][n] * scale);
        }
    }
}

// One block per (key tile, b * Hkv + g); dynamic shared memory: 4 tiles. dk or dv may be null
// (not wanted).
template <typename T, int DMAX>
__device__ void attention_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k,
                                   const T* __restrict__ v, const T* __restrict__ d_o,
                                   const float* __restrict__ lse, const float* __restrict__ delta,
                                   T* __restrict__ dk, T* __restrict__ dv, int seq, int Hq, int Hkv,
                                   int D, float scale_log2, float scale) {
    constexpr int NCH = DMAX / 32, D4 = DMAX / 4;
    float* ks = reinterpret_cast<float*>(attention_smem);  // [TILE][DMAX] keys, plain
    float* vs = ks + TILE * DMAX;                            // [TILE][DMAX] values, plain
    float* qs = vs + TILE * DMAX;                            // [TILE][DMAX] query rows, swizzled
    float* dos = qs + TILE * DMAX;                           // [TILE][DMAX] do rows, swizzled
    const float4* ks4 = reinterpret_cast<const float4*>(ks);
    const float4* vs4 = reinterpret_cast<const float4*>(vs);
    const float4* qs4 = reinterpret_cast<const float4*>(qs);
    const float4* dos4 = reinterpret_cast<const float4*>(dos);
    const int lane = threadIdx.x & 31, row0 = (threadIdx.x >> 5) * WARP_ROWS;
    const int b = blockIdx.y / Hkv, g = blockIdx.y % Hkv, group = Hq / Hkv;
    const int k0 = blockIdx.x * TILE;  // early keys meet the most query tiles: they start first
    const size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const size_t kv_head = (size_t)b * seq * kv_stride + (size_t)g * D;
    load_tile<T, DMAX, false>(ks, k + kv_head, k0, seq, kv_stride, D);
    load_tile<T, DMAX, false>(vs, v + kv_head, k0, seq, kv_stride, D);

    float dk_acc[WARP_ROWS][NCH], dv_acc[WARP_ROWS][NCH];  // rows: this warp's keys
#pragma unroll
    for (int r = 0; r < WARP_ROWS; ++r)
#pragma unroll
        for (int n = 0; n < NCH; ++n) dk_acc[r][n] = dv_acc[r][n] = 0.f;
    const int nd4 = (D + 3) >> 2;
    for (int h = g * group; h < (g + 1) * group; ++h) {
        const size_t q_head = (size_t)b * seq * q_stride + (size_t)h * D;
        const float* lse_head = lse + ((size_t)b * Hq + h) * seq;
        const float* delta_head = delta + ((size_t)b * Hq + h) * seq;
        for (int q0 = k0; q0 < seq; q0 += TILE) {
            __syncthreads();  // the previous query tile is no longer read
            load_tile<T, DMAX, true>(qs, q + q_head, q0, seq, q_stride, D);
            load_tile<T, DMAX, true>(dos, d_o + q_head, q0, seq, q_stride, D);
            __syncthreads();
            const int row = q0 + lane;
            const float lse2 = row < seq ? lse_head[row] * LOG2E : 0.f;
            const float dl = row < seq ? delta_head[row] : 0.f;
            float p[WARP_ROWS], ds[WARP_ROWS];  // hold the dot products q.k and do.v first
#pragma unroll
            for (int r = 0; r < WARP_ROWS; ++r) p[r] = ds[r] = 0.f;
            for (int c = 0; c < nd4; ++c) {
                const float4 qq = qs4[lane * D4 + (c ^ (lane & 7))];
                const float4 dd = dos4[lane * D4 + (c ^ (lane & 7))];
#pragma unroll
                for (int r = 0; r < WARP_ROWS; ++r) {
                    p[r] = dot4(qq, ks4[(row0 + r) * D4 + c], p[r]);
                    ds[r] = dot4(dd, vs4[(row0 + r) * D4 + c], ds[r]);
                }
            }
#pragma unroll
            for (int r = 0; r < WARP_ROWS; ++r) {
                const bool visible = row < seq && k0 + row0 + r <= row;
                p[r] = visible ? exp2f(p[r] * scale_log2 - lse2) : 0.f;
                ds[r] = p[r] * (ds[r] - dl);
            }
#pragma unroll 4
            for (int i = 0; i < TILE; ++i) {
                float qi[NCH], di[NCH];
#pragma unroll
                for (int n = 0; n < NCH; ++n) {
                    qi[n] = qs[swizzled<DMAX>(i, lane + 32 * n)];
                    di[n] = dos[swizzled<DMAX>(i, lane + 32 * n)];
                }
#pragma unroll
                for (int r = 0; r < WARP_ROWS; ++r) {
                    const float pi = __shfl_sync(FULL, p[r], i);
                    const float dsi = __shfl_sync(FULL, ds[r], i);
#pragma unroll
                    for (int n = 0; n < NCH; ++n) {
                        dv_acc[r][n] = fmaf(pi, di[n], dv_acc[r][n]);
                        dk_acc[r][n] = fmaf(dsi, qi[n], dk_acc[r][n]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < WARP_ROWS; ++r) {
        const int key = k0 + row0 + r;
        if (key >= seq) continue;
        const size_t at = kv_head + (size_t)key * kv_stride;
#pragma unroll
        for (int n = 0; n < NCH; ++n) {
            const int d = lane + 32 * n;
            if (d >= D) continue;
            if (dk != nullptr) dk[at + d] = from_f32<T>(dk_acc[r][n] * scale);
            if (dv != nullptr) dv[at + d] = from_f32<T>(dv_acc[r][n]);
        }
    }
}

// Warp w of the grid takes rows w, w + (warps in the grid), ... of `rows`.
template <typename F>
__device__ __forceinline__ void warp_per_row(size_t rows, F f) {
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    for (size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows; row += warps) f(row);
}

template <typename T>
__device__ void attention_probs(const float* __restrict__ s, T* __restrict__ p, float* __restrict__ lse,
                                int seq, int heads, int lse_at, int lse_stride, int recompute) {
    const int lane = threadIdx.x & 31;
    warp_per_row((size_t)heads * seq, [&](size_t row) {
        const int t = (int)(row % seq), keys = t + 1;
        const float* srow = s + row * seq;
        T* prow = p + row * seq;
        float* at = lse + lse_at + (size_t)(row / seq) * lse_stride + t;
        float row_lse;
        if (recompute) {
            row_lse = *at;
        } else {
            // Online max and sum over the lane's keys, then across the warp.
            float m = -INFINITY, sum = 0.f;
            for (int c0 = 8 * lane; c0 < keys; c0 += 256) {
                const int count = min(8, keys - c0);
                float x[8];
                load8(srow + c0, aligned16(srow + c0), count, x);
                for (int e = 0; e < count; ++e) {
                    if (x[e] > m) {
                        sum = sum * expf(m - x[e]) + 1.f;
                        m = x[e];
                    } else {
                        sum += expf(x[e] - m);
                    }
                }
            }
            const float row_max = warp_max(m);
            sum = warp_sum(m == -INFINITY ? 0.f : sum * expf(m - row_max));
            row_lse = row_max + logf(sum);
            if (lane == 0) *at = row_lse;
        }
        for (int c0 = 8 * lane; c0 < seq; c0 += 256) {
            const int count = min(8, seq - c0), live = max(0, min(count, keys - c0));
            float x[8];
            load8(srow + c0, aligned16(srow + c0), live, x);
#pragma unroll
            for (int e = 0; e < 8; ++e) x[e] = e < live ? expf(x[e] - row_lse) : 0.f;
            store8(prow + c0, aligned16(prow + c0), count, x);
        }
    });
}

template <typename T>
__device__ void attention_dscores(T* p_ds, const float* __restrict__ dp, const float* __restrict__ delta, int seq,
                                  int heads, int delta_at, int delta_stride) {
    const int lane = threadIdx.x & 31;
    warp_per_row((size_t)heads * seq, [&](size_t row) {
        const int t = (int)(row % seq), keys = t + 1;
        const float d = delta[delta_at + (size_t)(row / seq) * delta_stride + t];
        T* prow = p_ds + row * seq;
        const float* dprow = dp + row * seq;
        for (int c0 = 8 * lane; c0 < keys; c0 += 256) {
            const int count = min(8, keys - c0);
            float pv[8], dv[8];
            load8(prow + c0, aligned16(prow + c0), count, pv);
            load8(dprow + c0, aligned16(dprow + c0), count, dv);
#pragma unroll
            for (int e = 0; e < 8; ++e) pv[e] *= dv[e] - d;
            store8(prow + c0, aligned16(prow + c0), count, pv);
        }
    });
}

#define ATTENTION_TILED_KERNELS(T, S, DMAX)                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_fwd_d##DMAX##_##S(           \
        const T* q, const T* k, const T* v, T* o, float* lse, int seq, int Hq, int Hkv, int D,   \
        float scale_log2) {                                                                      \
        attention_fwd<T, DMAX>(q, k, v, o, lse, seq, Hq, Hkv, D, scale_log2);                    \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_bwd_dq_d##DMAX##_##S(        \
        const T* q, const T* k, const T* v, const T* d_o, const float* lse, const float* delta,  \
        T* dq, int seq, int Hq, int Hkv, int D, float scale_log2, float scale) {                 \
        attention_bwd_dq<T, DMAX>(q, k, v, d_o, lse, delta, dq, seq, Hq, Hkv, D, scale_log2,     \
                                  scale);                                                        \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_bwd_dkdv_d##DMAX##_##S(      \
        const T* q, const T* k, const T* v, const T* d_o, const float* lse, const float* delta,  \
        T* dk, T* dv, int seq, int Hq, int Hkv, int D, float scale_log2, float scale) {          \
        attention_bwd_dkdv<T, DMAX>(q, k, v, d_o, lse, delta, dk, dv, seq, Hq, Hkv, D,           \
                                    scale_log2, scale);                                          \
    }

#define ATTENTION_KERNELS(T, S)                                                                  \
    ATTENTION_TILED_KERNELS(T, S, 64)                                                            \
    ATTENTION_TILED_KERNELS(T, S, 128)                                                           \
    extern "C" __global__ void attention_bwd_delta_##S(const T* o, const T* d_o, float* delta,   \
                                                       int batch, int seq, int Hq, int D) {      \
        attention_bwd_delta<T>(o, d_o, delta, batch, seq, Hq, D);                                \
    }                                                                                            \
    extern "C" __global__ void attention_probs_##S(const float* s, T* p, float* lse, int seq,    \
                                                   int heads, int lse_at, int lse_stride,        \
                                                   int recompute) {                              \
        attention_probs<T>(s, p, lse, seq, heads, lse_at, lse_stride, recompute);                \
    }                                                                                            \
    extern "C" __global__ void attention_dscores_##S(T* p_ds, const float* dp, const float* delta, \
                                                     int seq, int heads, int delta_at,           \
                                                     int delta_stride) {                         \
        attention_dscores<T>(p_ds, dp, delta, seq, heads, delta_at, delta_stride);               \
    }

ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(bf16, bf16)
