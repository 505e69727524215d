// Calibration statistics of a linear's input x: [seqs, seq_len, dim] (T = f32 or bf16), in f64.
//   sq_norms[j]    += sum_t x_tj^2
//   sums[j]        += sum_t x_tj
//   seq_var_sum[j] += sum_seq max(E_t[x_tj^2] - E_t[x_tj]^2, 0)    (population variance per sequence)
// exactly as crate::prune::calib::InputStats::accumulate computes them.
//
// stats_partial: grid (seqs * chunks, ceil(dim / blockDim.x)); block (sc, cb) sums the tokens
// [chunk * chunk_len, min(seq_len, (chunk + 1) * chunk_len)) of sequence sc / chunks for its
// columns; the threads of a warp read consecutive columns of a row (coalesced).
//   partial: [seqs * chunks, 2, dim]  (s1 = sum x, s2 = sum x^2 of the chunk)
// stats_reduce: one thread per column adds the chunks of each sequence in order (no atomics, so
// the result is deterministic), then the sequences in order, like the CPU loop.
// Products and sums use __dmul_rn / __dadd_rn / __dsub_rn: no FMA contraction, so each step is
// rounded like the CPU reference's (with one chunk per sequence the results are bit-identical).
//
// stats_scaler_row: out[j] = sq_norms[j] / sequences (Wanda's scaler_row).
#include "common.cuh"

template <typename T>
__device__ void stats_partial(const T* x, double* partial, int seqs, int seq_len, int dim, int chunk_len,
                              int chunks) {
    const int sc = blockIdx.x;
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (sc >= seqs * chunks || j >= dim) return;
    const int seq = sc / chunks, chunk = sc % chunks;
    const int t0 = chunk * chunk_len;
    const int t1 = min(seq_len, t0 + chunk_len);
    const T* xs = x + ((size_t)seq * seq_len) * dim + j;
    double s1 = 0.0, s2 = 0.0;
    for (int t = t0; t < t1; ++t) {
        const double a = (double)to_f32(xs[(size_t)t * dim]);
        s1 = __dadd_rn(s1, a);
        s2 = __dadd_rn(s2, __dmul_rn(a, a));
    }
    partial[((size_t)sc * 2) * dim + j] = s1;
    partial[((size_t)sc * 2 + 1) * dim + j] = s2;
}

extern "C" __global__ void stats_reduce(const double* partial, double* sq_norms, double* sums,
                                        double* seq_var_sum, int seqs, int seq_len, int dim, int chunks) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    const double t = (double)seq_len;
    double sq = sq_norms[j], sm = sums[j], var = seq_var_sum[j];
    for (int seq = 0; seq < seqs; ++seq) {
        double s1 = 0.0, s2 = 0.0;
        for (int c = 0; c < chunks; ++c) {
            const size_t sc = (size_t)seq * chunks + c;
            s1 = __dadd_rn(s1, partial[(sc * 2) * dim + j]);
            s2 = __dadd_rn(s2, partial[(sc * 2 + 1) * dim + j]);
        }
        sq = __dadd_rn(sq, s2);
        sm = __dadd_rn(sm, s1);
        const double mean = __ddiv_rn(s1, t);
        // fmax(NaN, 0) = 0, as f64::max on the CPU.
        var = __dadd_rn(var, fmax(__dsub_rn(__ddiv_rn(s2, t), __dmul_rn(mean, mean)), 0.0));
    }
    sq_norms[j] = sq;
    sums[j] = sm;
    seq_var_sum[j] = var;
}

extern "C" __global__ void stats_scaler_row(const double* sq_norms, double* out, double sequences, int dim) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < dim) out[j] = __ddiv_rn(sq_norms[j], sequences);
}

#define STATS_KERNELS(T, S)                                                                           \
    extern "C" __global__ void stats_partial_##S(const T* x, double* partial, int seqs, int seq_len,   \
                                                 int dim, int chunk_len, int chunks) {                 \
        stats_partial<T>(x, partial, seqs, seq_len, dim, chunk_len, chunks);                          \
    }

STATS_KERNELS(float, f32)
STATS_KERNELS(bf16, bf16)
