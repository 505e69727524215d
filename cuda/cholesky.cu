// Dense f64 Cholesky pieces for SparseGPT's inverse factor, row-major [n, n] matrices.
// The Rust side (src/ops/sparsegpt/mod.rs) runs the blocked algorithms; DGEMM does the bulk.
//
// Blocked right-looking Cholesky A = L·Lᵀ with CHOL_NB-wide panels, for k0 = 0, NB, 2NB, ...:
//   chol_diag:   L_kk = chol(A_kk)                      one CUDA block, in shared memory
//   chol_panel:  L_ik = A_ik · L_kk⁻ᵀ for rows i below   one thread per row (forward substitution)
//   (DGEMM)      A_22 -= P·Pᵀ with P the solved panel
// Only the lower triangle (diagonal included) is read and becomes L; the strict upper triangle
// is left holding intermediate values. A pivot that is not > 0 (or NaN) writes
// info = {pivot index + 1, pivot value} once; every later kernel sees info[0] != 0 and returns.
//
// Triangular inverse X = L⁻¹: trtri_diag inverts each diagonal block; the Rust side combines
// blocks with X21 = −X22·L21·X11 (two DGEMMs).
// Then symmetrize (after the DGEMM Xᵀ·X) and transpose_lower_to_upper (U = Lᵀ, zeros below).

#define CHOL_NB 64        // panel width; the Rust side uses the same constant
#define PANEL_ROWS 32     // rows per block in chol_panel (= threads per block)
#define TILE 32           // tile edge of the 32x8-thread transpose/symmetrize kernels

// Factor the diagonal block A[k0:k0+b, k0:k0+b] (b = min(NB, n - k0)) in place.
// Launch: 1 block of 256 threads (64 x 4). Column j: every thread reads the pivot d = s[j][j];
// the column below it is scaled by 1/sqrt(d); barrier; the trailing lower triangle is updated
// (s[i][k] -= l_ij·l_kj for j < k <= i) while thread 0 stores sqrt(d) (nobody reads s[j][j]
// after the first barrier of iteration j); barrier.
extern "C" __global__ void chol_diag(double* a, int n, int k0, double* info) {
    __shared__ double s[CHOL_NB][CHOL_NB + 1];
    if (info[0] != 0.0) return;  // an earlier block failed: uniform across the block
    const int b = min(CHOL_NB, n - k0);
    const int tx = threadIdx.x % CHOL_NB, ty = threadIdx.x / CHOL_NB;
    const int ny = blockDim.x / CHOL_NB;
    double* blk = a + (size_t)k0 * n + k0;
    for (int i = ty; i < b; i += ny)
        if (tx <= i) s[i][tx] = blk[(size_t)i * n + tx];
    __syncthreads();
    for (int j = 0; j < b; ++j) {
        // All threads read the same pivot after the last barrier, so all return together.
        const double d = s[j][j];
        if (!(d > 0.0)) {
            if (threadIdx.x == 0) {
                info[0] = (double)(k0 + j + 1);
                info[1] = d;
            }
            return;
        }
        const double ljj = sqrt(d);
        for (int i = j + 1 + threadIdx.x; i < b; i += blockDim.x) s[i][j] /= ljj;
        __syncthreads();
        if (threadIdx.x == 0) s[j][j] = ljj;
        const int k = j + 1 + tx;  // this thread's column of the trailing triangle
        if (k < b) {
            const double lkj = s[k][j];
            for (int i = j + 1 + ty; i < b; i += ny)
                if (k <= i) s[i][k] -= s[i][j] * lkj;
        }
        __syncthreads();
    }
    for (int i = ty; i < b; i += ny)
        if (tx <= i) blk[(size_t)i * n + tx] = s[i][tx];
}

// Solve the panel below the diagonal block: for each row i in [k0+NB, n),
// x = A[i, k0:k0+NB] · L_kk⁻ᵀ, i.e. x_j = (a_ij − Σ_{p<j} x_p·L_jp) / L_jj. Written to A and to
// panel[(i − k0 − NB)·NB + j] (contiguous, for the DGEMM). Requires k0 + NB < n.
// Launch: ceil((n − k0 − NB) / PANEL_ROWS) blocks of PANEL_ROWS threads; thread t owns one row.
extern "C" __global__ void chol_panel(double* a, double* panel, int n, int k0, const double* info) {
    __shared__ double l[CHOL_NB * (CHOL_NB + 1) / 2];  // L_kk lower triangle, (j, p) at j(j+1)/2 + p
    __shared__ double x[CHOL_NB][PANEL_ROWS + 1];      // x[p][t]: column p of the block's row t
    if (info[0] != 0.0) return;
    const int t = threadIdx.x;
    const int row0 = k0 + CHOL_NB + blockIdx.x * PANEL_ROWS;
    for (int e = t; e < CHOL_NB * CHOL_NB; e += PANEL_ROWS) {
        const int j = e / CHOL_NB, p = e % CHOL_NB;
        if (p <= j) l[j * (j + 1) / 2 + p] = a[(size_t)(k0 + j) * n + k0 + p];
    }
    for (int e = t; e < PANEL_ROWS * CHOL_NB; e += PANEL_ROWS) {
        const int r = e / CHOL_NB, p = e % CHOL_NB, row = row0 + r;
        x[p][r] = row < n ? a[(size_t)row * n + k0 + p] : 0.0;
    }
    __syncthreads();
    for (int j = 0; j < CHOL_NB; ++j) {
        const double* lj = l + j * (j + 1) / 2;
        double s = x[j][t];
        for (int p = 0; p < j; ++p) s -= x[p][t] * lj[p];
        x[j][t] = s / lj[j];
    }
    __syncthreads();
    for (int e = t; e < PANEL_ROWS * CHOL_NB; e += PANEL_ROWS) {
        const int r = e / CHOL_NB, p = e % CHOL_NB, row = row0 + r;
        if (row < n) {
            const double v = x[p][r];
            a[(size_t)row * n + k0 + p] = v;
            panel[(size_t)(row - k0 - CHOL_NB) * CHOL_NB + p] = v;
        }
    }
}

// Inverse of each diagonal block of the lower-triangular l, written in full (zeros above the
// diagonal) into the same block of x. Column j of a block: x_jj = 1/L_jj and, for i > j,
// x_ij = −(Σ_{p=j}^{i−1} L_ip·x_pj) / L_ii. Columns are independent: thread j owns column j.
// Launch: ceil(n / NB) blocks of NB threads.
extern "C" __global__ void trtri_diag(const double* l, double* x, int n) {
    __shared__ double xs[CHOL_NB][CHOL_NB];  // xs[p][j], read and written only by thread j
    const int k0 = blockIdx.x * CHOL_NB;
    const int b = min(CHOL_NB, n - k0);
    const int j = threadIdx.x;
    if (j >= b) return;  // no barriers below
    const double* lb = l + (size_t)k0 * n + k0;
    double* xb = x + (size_t)k0 * n + k0;
    for (int i = 0; i < b; ++i) {
        double v = 0.0;
        if (i == j) {
            v = 1.0 / lb[(size_t)i * n + i];
        } else if (i > j) {
            double s = 0.0;
            for (int p = j; p < i; ++p) s -= lb[(size_t)i * n + p] * xs[p][j];
            v = s / lb[(size_t)i * n + i];
        }
        xs[i][j] = v;
        xb[(size_t)i * n + j] = v;
    }
}

// a[i][j] = a[j][i] = (a[i][j] + a[j][i]) / 2 for i > j. Launch: 32x8 threads, grid
// (ceil(n/32), ceil(n/8)); thread (x, y) handles column x, row y of the strict lower triangle.
extern "C" __global__ void symmetrize(double* a, int n) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= n || j >= i) return;
    const double v = 0.5 * (a[(size_t)i * n + j] + a[(size_t)j * n + i]);
    a[(size_t)i * n + j] = v;
    a[(size_t)j * n + i] = v;
}

// u[r][c] = lower[c][r] for c >= r, 0 below the diagonal (U = Lᵀ from the lower triangle only).
// Launch: 32x8 threads, grid (ceil(n/32), ceil(n/32)); block (bx, by) writes the 32x32 output
// tile at rows by·32.., columns bx·32.., reading the transposed input tile through shared memory.
extern "C" __global__ void transpose_lower_to_upper(const double* lower, double* u, int n) {
    __shared__ double tile[TILE][TILE + 1];
    const int r0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    for (int k = threadIdx.y; k < TILE; k += blockDim.y) {
        const int ir = c0 + k, ic = r0 + threadIdx.x;  // tile[k][x] = lower[c0 + k][r0 + x]
        if (ir < n && ic < n) tile[k][threadIdx.x] = lower[(size_t)ir * n + ic];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < TILE; k += blockDim.y) {
        const int r = r0 + k, c = c0 + threadIdx.x;  // lower[c][r] = tile[x][k]
        if (r < n && c < n) u[(size_t)r * n + c] = c >= r ? tile[threadIdx.x][k] : 0.0;
    }
}
