// Embedding lookup and its gradient. weight, dweight: [vocab, dim]; ids: [tokens] (u32);
// out, dout: [tokens, dim].
//   forward:  out[n, :] = weight[ids[n], :]            one block per token
//   backward: dweight[v, :] = sum_{n : ids[n] = v} dout[n, :]
// The backward is deterministic and atomic-free: the host groups token positions by id
// (order[] sorted by id, token order kept within an id; starts[u]..starts[u+1] is id
// uniq[u]'s range), and block (u, column tile) sums its id's rows in token order in f32.
// Rows of dweight whose id does not occur are zeroed by the caller.
#include "common.cuh"

template <typename T>
__device__ void embedding_fwd(const T* weight, const uint32_t* ids, T* out, int tokens, int vocab,
                              int dim) {
    const int n = blockIdx.x;
    if (n >= tokens) return;
    const uint32_t id = ids[n];
    T* out_row = out + (size_t)n * dim;
    if (id >= (uint32_t)vocab) {
        // The host rejects such ids before launching; never read outside weight regardless.
        for (int j = threadIdx.x; j < dim; j += blockDim.x) out_row[j] = from_f32<T>(NAN);
        return;
    }
    const T* w_row = weight + (size_t)id * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) out_row[j] = w_row[j];
}

// Grid: (n_unique, ceil(dim / blockDim.x)); thread = one column of one id's row.
template <typename T>
__device__ void embedding_bwd(const T* dout, const uint32_t* order, const uint32_t* starts,
                              const uint32_t* uniq, T* dweight, int n_unique, int tokens, int vocab,
                              int dim) {
    const int u = blockIdx.x;
    const int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (u >= n_unique || col >= dim) return;
    const uint32_t id = uniq[u];
    if (id >= (uint32_t)vocab) return;
    const uint32_t end = min(starts[u + 1], (uint32_t)tokens);
    float acc = 0.f;
    for (uint32_t k = starts[u]; k < end; ++k) {
        const uint32_t n = order[k];
        if (n < (uint32_t)tokens) acc += to_f32(dout[(size_t)n * dim + col]);
    }
    dweight[(size_t)id * dim + col] = from_f32<T>(acc);
}

#define EMBEDDING_KERNELS(T, S)                                                                  \
    extern "C" __global__ void embedding_fwd_##S(const T* weight, const uint32_t* ids, T* out,   \
                                                 int tokens, int vocab, int dim) {               \
        embedding_fwd<T>(weight, ids, out, tokens, vocab, dim);                                  \
    }                                                                                            \
    extern "C" __global__ void embedding_bwd_##S(const T* dout, const uint32_t* order,           \
                                                 const uint32_t* starts, const uint32_t* uniq,   \
                                                 T* dweight, int n_unique, int tokens,           \
                                                 int vocab, int dim) {                           \
        embedding_bwd<T>(dout, order, starts, uniq, dweight, n_unique, tokens, vocab, dim);      \
    }

EMBEDDING_KERNELS(float, f32)
EMBEDDING_KERNELS(bf16, bf16)
