// SparseGPT on the GPU in f64 (the CPU reference is src/prune/sparsegpt.rs).
// W: [rows, cols] row-major (out × in), H: [cols, cols], U: [cols, cols] upper with H⁻¹ = UᵀU.
// Per column block [i1, i1 + count) the Rust side runs:
//   sparsegpt_block_scores   scores[r·count + c] = (float)(W1[r,c]² / U_cc²)   (unstructured)
//   (selection)              one packed keep bit per score over the whole block
//   sparsegpt_block_columns  the sequential column loop, one warp per row, on W in place
//   (DGEMM)                  W[:, i2:] −= Err1 · U[i1:i2, i2:]
// and at the end sparsegpt_pack_mask turns the per-element keep bytes into a BitMask.
#include <stdint.h>

#define SGPT_SLOTS 8  // block columns per lane: blocks of up to 32·SGPT_SLOTS = 256 columns
#define FULL_MASK 0xffffffffu

// Step 1 of SparseGPT, per input column j: a dead input (H_jj = 0) gets diag[j] = 1 and its
// weight column zeroed; otherwise diag[j] = H_jj. Launch: one thread per column.
extern "C" __global__ void sparsegpt_dead_inputs(const double* h, double* w, double* diag, int rows, int cols) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double d = h[(size_t)j * cols + j];
    if (d == 0.0) {
        d = 1.0;
        for (int r = 0; r < rows; ++r) w[(size_t)r * cols + j] = 0.0;
    }
    diag[j] = d;
}

// Step 2: H_jj ← diag[j] + damp on the working copy of H. Launch: one thread per column.
extern "C" __global__ void sparsegpt_damp(double* h, const double* diag, int cols, double damp) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    h[(size_t)j * cols + j] = diag[j] + damp;
}

// scores[r·count + c] = (float)(W[r, i1+c]² / U[i1+c, i1+c]²), the f64 expression of the CPU
// reference rounded to f32. Launch: one thread per score (rows·count).
extern "C" __global__ void sparsegpt_block_scores(const double* w, const double* u, float* scores, int rows,
                                                  int cols, int i1, int count) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)rows * count) return;
    const int r = (int)(k / count), c = (int)(k % count);
    const double x = w[(size_t)r * cols + i1 + c];
    const double d = u[(size_t)(i1 + c) * cols + i1 + c];
    scores[k] = (float)(x * x / (d * d));
}

// The column loop of one block, one warp per row r. Lane l holds the block columns
// j = v·32 + l (v < SGPT_SLOTS) in registers: wv[v] = W1[r, j], dv[v] = U_jj.
// Keep decisions: unstructured from block_keep (bit r·count + j of the block's flat selection);
// N:M (nm_m > 0) at every column i with i % nm_m == 0 from the current values: in the group
// [i, i + nm_m) the nm_m − nm_n lowest scores wv²/dv² are pruned, ties to the lower column.
// For each column i: the owner lane computes q (0 if pruned), err = (w − q)/U_ii and sets w = q;
// err is broadcast and every lane updates its columns j > i: w_j −= err·U[i1+i, i1+j].
// Outputs: the block columns of W, err1[r·count + i], keep[r·cols + i1 + j] (1 = kept).
// Launch: blocks of 256 threads (8 rows), grid ceil(rows / 8); count ≤ 32·SGPT_SLOTS.
extern "C" __global__ void sparsegpt_block_columns(double* w, const double* u, const uint8_t* block_keep,
                                                   uint8_t* keep, double* err1, int rows, int cols, int i1,
                                                   int count, int nm_n, int nm_m) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;  // the whole warp: r depends on the warp index only
    double* wr = w + (size_t)r * cols + i1;
    const double* ub = u + (size_t)i1 * cols + i1;  // U1[i, j] = ub[i·cols + j]
    double wv[SGPT_SLOTS], dv[SGPT_SLOTS];
    uint32_t kept = 0;  // bit v: column v·32 + lane is kept
#pragma unroll
    for (int v = 0; v < SGPT_SLOTS; ++v) {
        const int j = v * 32 + lane;
        wv[v] = 0.0;
        dv[v] = 1.0;
        if (j < count) {
            wv[v] = wr[j];
            dv[v] = ub[(size_t)j * cols + j];
            uint32_t bit = 1;
            if (block_keep != nullptr) {
                const size_t flat = (size_t)r * count + j;
                bit = (block_keep[flat >> 3] >> (flat & 7)) & 1u;
            }
            kept |= bit << v;
        }
    }
    for (int i = 0; i < count; ++i) {
        const int owner = i & 31, vi = i >> 5;
        if (nm_m > 0 && i % nm_m == 0) {
            // rank[v] = number of group columns that sort before column v·32 + lane.
            int rank[SGPT_SLOTS];
            double score[SGPT_SLOTS];
#pragma unroll
            for (int v = 0; v < SGPT_SLOTS; ++v) {
                rank[v] = 0;
                const bool in_group = v * 32 + 31 >= i && v * 32 < i + nm_m;  // warp-uniform
                score[v] = in_group ? wv[v] * wv[v] / (dv[v] * dv[v]) : 0.0;
            }
            // Column c of the group sits in slot c / 32 of lane c % 32: walk the slots in an
            // unrolled loop (so no register array is indexed at run time), the group's columns
            // in each slot with a warp-uniform loop, and broadcast each score once.
#pragma unroll
            for (int sv = 0; sv < SGPT_SLOTS; ++sv) {
                const int c_end = min(i + nm_m, sv * 32 + 32);
                for (int c = max(i, sv * 32); c < c_end; ++c) {
                    const double sc = __shfl_sync(FULL_MASK, score[sv], c & 31);
#pragma unroll
                    for (int v = 0; v < SGPT_SLOTS; ++v) {
                        const int j = v * 32 + lane;
                        if (j >= i && j < i + nm_m && (sc < score[v] || (sc == score[v] && c < j))) ++rank[v];
                    }
                }
            }
#pragma unroll
            for (int v = 0; v < SGPT_SLOTS; ++v) {
                const int j = v * 32 + lane;
                if (j >= i && j < i + nm_m && rank[v] < nm_m - nm_n) kept &= ~(1u << v);
            }
        }
        double err_own = 0.0;
        if (lane == owner) {
#pragma unroll
            for (int v = 0; v < SGPT_SLOTS; ++v) {
                if (v == vi) {
                    const double x = wv[v];
                    const double q = ((kept >> v) & 1u) ? x : 0.0;
                    err_own = (x - q) / dv[v];
                    wv[v] = q;
                }
            }
            err1[(size_t)r * count + i] = err_own;
        }
        const double err = __shfl_sync(FULL_MASK, err_own, owner);
        // err == 0 (a kept weight) leaves every w_j unchanged: skip the row of U (warp-uniform).
        if (err != 0.0) {
            const double* urow = ub + (size_t)i * cols;
#pragma unroll
            for (int v = 0; v < SGPT_SLOTS; ++v) {
                const int j = v * 32 + lane;
                if (j > i && j < count) wv[v] -= err * urow[j];
            }
        }
    }
#pragma unroll
    for (int v = 0; v < SGPT_SLOTS; ++v) {
        const int j = v * 32 + lane;
        if (j < count) {
            wr[j] = wv[v];
            keep[(size_t)r * cols + i1 + j] = (uint8_t)((kept >> v) & 1u);
        }
    }
}

// bits[r·stride + b] = Σ_t keep[r·cols + 8b + t] << t over the columns 8b + t < cols (the
// BitMask layout; padding bits 0). Launch: one thread per output byte (rows·stride).
extern "C" __global__ void sparsegpt_pack_mask(const uint8_t* keep, uint8_t* bits, int rows, int cols,
                                               int stride) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)rows * stride) return;
    const int r = (int)(k / stride), b = (int)(k % stride);
    uint32_t byte = 0;
    for (int t = 0; t < 8; ++t) {
        const int c = b * 8 + t;
        if (c < cols && keep[(size_t)r * cols + c] != 0) byte |= 1u << t;
    }
    bits[k] = (uint8_t)byte;
}
