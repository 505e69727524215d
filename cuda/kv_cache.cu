// KV cache for generation: new key/value rows written at (sequence, position), and attention of
// query rows over the cached keys of their own sequence up to their own position.
//   cache, k_cache, v_cache: [B, Hkv, S, D]; rows: [N, Hkv, D]; q, o: [N, Hq, D];
//   seqs, positions: [N] u32 (the launcher checked seqs < B, positions < S).
// kv_write_*: cache[seqs[n], g, positions[n]] = rows[n, g] for every g; one block per row n.
// kv_attention_*: one block per (row n, query head h); h reads kv head g = h / (Hq / Hkv) of
// sequence b = seqs[n] at keys u = 0 .. positions[n]; c = 1/sqrt(D):
//   s_u = c q.k_u,  o = sum_u e^{s_u - m} v_u / sum_u e^{s_u - m}  (m = max_u s_u)
// Warp w takes keys w, w + WARPS, ...; its lanes split D (lane l holds d = l, l + 32, ...), a
// warp sum gives s_u, and the warp keeps an online softmax: running max m, sum l = sum e^{s - m}
// and accumulators sum e^{s - m} v, rescaled by e^{m_old - m_new} when m grows. The warps then
// merge their (m, l, acc) through shared memory. Scores are in base-2 units (q is multiplied by
// c log2(e)) for exp2f. Any S; D <= KV_MAX_D (the launcher refuses larger).
#include "common.cuh"

constexpr int KV_THREADS = 256;                // both kernels
constexpr int KV_WARPS = KV_THREADS / 32;
constexpr int KV_MAX_D = 256;                  // largest head dimension of kv_attention
constexpr int KV_CHUNKS = KV_MAX_D / 32;       // elements of a head vector per lane

template <typename T>
__device__ void kv_write(T* __restrict__ cache, const T* __restrict__ rows,
                         const unsigned* __restrict__ seqs, const unsigned* __restrict__ positions,
                         int capacity, int kv_heads, int D) {
    const int n = blockIdx.x;  // the grid has exactly N blocks
    const int row_len = kv_heads * D;
    // Head g's vector goes to ((seqs[n] * Hkv + g) * S + positions[n]) * D.
    T* dst = cache + ((size_t)seqs[n] * kv_heads * capacity + positions[n]) * D;
    const T* src = rows + (size_t)n * row_len;
    for (int e = threadIdx.x; e < row_len; e += blockDim.x) {
        const int g = e / D;
        dst[(size_t)g * capacity * D + (e - g * D)] = src[e];
    }
}

template <typename T>
__device__ void kv_attention(const T* __restrict__ q, const T* __restrict__ k_cache,
                             const T* __restrict__ v_cache, T* __restrict__ o,
                             const unsigned* __restrict__ seqs,
                             const unsigned* __restrict__ positions, int q_heads, int kv_heads,
                             int capacity, int D, float scale_log2) {
    __shared__ float warp_m[KV_WARPS], warp_l[KV_WARPS];
    __shared__ float warp_acc[KV_WARPS][KV_MAX_D];
    const int n = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = h / (q_heads / kv_heads);
    // Key 0 of kv head g of the sequence; a head's keys are D apart.
    const size_t head0 = ((size_t)seqs[n] * kv_heads + g) * capacity * D;
    const size_t q_at = ((size_t)n * q_heads + h) * D;

    float qd[KV_CHUNKS], acc[KV_CHUNKS];
#pragma unroll
    for (int c = 0; c < KV_CHUNKS; ++c) {
        const int d = lane + 32 * c;
        qd[c] = d < D ? to_f32(q[q_at + d]) * scale_log2 : 0.f;
        acc[c] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    const int keys = (int)positions[n] + 1;
    for (int u = warp; u < keys; u += KV_WARPS) {
        const T* k_row = k_cache + head0 + (size_t)u * D;
        const T* v_row = v_cache + head0 + (size_t)u * D;
        float s = 0.f;
#pragma unroll
        for (int c = 0; c < KV_CHUNKS; ++c) {
            const int d = lane + 32 * c;
            if (d < D) s = fmaf(qd[c], to_f32(k_row[d]), s);
        }
        s = warp_sum(s);
        const float m_new = fmaxf(m, s);
        const float alpha = exp2f(m - m_new);  // 0 at the first key (m = -inf)
        const float p = exp2f(s - m_new);
        l = l * alpha + p;
#pragma unroll
        for (int c = 0; c < KV_CHUNKS; ++c) {
            const int d = lane + 32 * c;
            if (d < D) acc[c] = fmaf(p, to_f32(v_row[d]), acc[c] * alpha);
        }
        m = m_new;
    }

    // Merge the warps. Warp 0 always has key 0, so m_all is finite; a warp without keys
    // (m = -inf, l = 0, acc = 0) weighs e^{-inf} = 0.
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (int c = 0; c < KV_CHUNKS; ++c) {
        const int d = lane + 32 * c;
        if (d < D) warp_acc[warp][d] = acc[c];
    }
    __syncthreads();
    float m_all = -INFINITY;
    for (int w = 0; w < KV_WARPS; ++w) m_all = fmaxf(m_all, warp_m[w]);
    float l_all = 0.f;
    for (int w = 0; w < KV_WARPS; ++w) l_all = fmaf(warp_l[w], exp2f(warp_m[w] - m_all), l_all);
    const float inv = 1.f / l_all;
    for (int d = threadIdx.x; d < D; d += KV_THREADS) {
        float x = 0.f;
        for (int w = 0; w < KV_WARPS; ++w) x = fmaf(warp_acc[w][d], exp2f(warp_m[w] - m_all), x);
        o[q_at + d] = from_f32<T>(x * inv);
    }
}

#define KV_CACHE_KERNELS(T, S)                                                                    \
    extern "C" __global__ void __launch_bounds__(KV_THREADS) kv_write_##S(                        \
        T* cache, const T* rows, const unsigned* seqs, const unsigned* positions, int capacity,   \
        int kv_heads, int D) {                                                                    \
        kv_write<T>(cache, rows, seqs, positions, capacity, kv_heads, D);                         \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(KV_THREADS) kv_attention_##S(                    \
        const T* q, const T* k_cache, const T* v_cache, T* o, const unsigned* seqs,               \
        const unsigned* positions, int q_heads, int kv_heads, int capacity, int D,                \
        float scale_log2) {                                                                       \
        kv_attention<T>(q, k_cache, v_cache, o, seqs, positions, q_heads, kv_heads, capacity, D,  \
                        scale_log2);                                                              \
    }

KV_CACHE_KERNELS(float, f32)
KV_CACHE_KERNELS(bf16, bf16)
