//! Launchers for `cuda/cholesky.cu` and `cuda/sparsegpt.cu`, and the row-major f64 GEMM
//! wrapper over cuBLAS DGEMM. Every launcher checks the lengths of the buffers it is given
//! against the sizes it passes, and returns an error instead of launching out of bounds.
//! All matrices are row-major; `n`, `rows`, `cols` are element counts.
//!
//! Each kernel launch's grid and block come from a `…_geometry` function here (plain numbers,
//! [`Launch`]), which the launcher turns into its `LaunchConfig` and the CPU execution of the
//! kernels (tests/cuda_on_cpu/{cholesky,sparsegpt}.rs) uses as it is.

use crate::ops::expect_len;
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use crate::device::{CudaBuffer, CudaDevice, Launch};
use crate::ops::to_i32;
use crate::{Error, Result};

/// Panel width of the blocked Cholesky and of the diagonal blocks of the triangular inverse
/// (`CHOL_NB` in `cuda/cholesky.cu`).
pub const CHOL_BLOCK: usize = 64;
/// Widest SparseGPT column block the column kernel holds in registers (`32·SGPT_SLOTS`).
pub const MAX_BLOCK_COLUMNS: usize = 256;
/// Rows per block of `chol_panel` (`PANEL_ROWS`).
const PANEL_ROWS: usize = 32;
/// Threads of `chol_diag`: 64 columns × 4 row groups.
const DIAG_THREADS: u32 = 256;
/// Threads per block of the SparseGPT column kernel: 8 warps, one row each.
const COLUMN_THREADS: u32 = 256;
const THREADS_1D: u32 = 256;

/// `a·b` or an error naming `what`.
pub(crate) fn product(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| Error::invalid(format!("{what}: {a}x{b} overflows")))
}

/// [`to_i32`] for several sizes at once.
fn to_i32s<const N: usize>(what: &'static str, vals: [usize; N]) -> Result<[i32; N]> {
    let mut out = [0i32; N];
    for (dst, v) in out.iter_mut().zip(vals) {
        *dst = to_i32(what, v)?;
    }
    Ok(out)
}

fn grid_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v.max(1)).map_err(|_| Error::invalid(format!("{what}: grid of {v} blocks")))
}

/// A 32×8-thread 2-D launch covering `x_items × y_items` with `y_per_block` rows per block.
fn grid_2d(what: &str, x_items: usize, y_items: usize, y_per_block: usize) -> Result<Launch> {
    let gy = y_items.div_ceil(y_per_block);
    if gy > 65_535 {
        return Err(Error::invalid(format!("{what}: {y_items} rows exceed one CUDA grid")));
    }
    Ok(Launch {
        grid: (grid_u32(what, x_items.div_ceil(32))?, grid_u32(what, gy)?, 1),
        block: (32, 8, 1),
        shared_bytes: 0,
    })
}

/// `chol_diag`: one block of 256 threads (64 columns × 4 row groups), whatever the matrix.
pub fn chol_diag_geometry() -> Result<Launch> {
    Ok(Launch { grid: (1, 1, 1), block: (DIAG_THREADS, 1, 1), shared_bytes: 0 })
}

/// `chol_panel` below the diagonal block at `k0` of an [n, n] matrix: ⌈(n − k0 − 64)/32⌉
/// blocks of 32 threads, one row each. An error when no row lies below the block.
pub fn chol_panel_geometry(n: usize, k0: usize) -> Result<Launch> {
    let rest = n.checked_sub(k0).and_then(|r| r.checked_sub(CHOL_BLOCK)).filter(|&r| r > 0);
    let rest = rest.ok_or_else(|| Error::invalid(format!("chol_panel: no rows below the block at {k0} of {n}x{n}")))?;
    Ok(Launch {
        grid: (grid_u32("chol_panel", rest.div_ceil(PANEL_ROWS))?, 1, 1),
        block: (PANEL_ROWS as u32, 1, 1),
        shared_bytes: 0,
    })
}

/// `trtri_diag` over an [n, n] matrix: one block of 64 threads per 64×64 diagonal block.
pub fn trtri_diag_geometry(n: usize) -> Result<Launch> {
    Ok(Launch {
        grid: (grid_u32("trtri_diag", n.div_ceil(CHOL_BLOCK))?, 1, 1),
        block: (CHOL_BLOCK as u32, 1, 1),
        shared_bytes: 0,
    })
}

/// `symmetrize` of an [n, n] matrix: 32×8-thread blocks, one thread per element.
pub fn symmetrize_geometry(n: usize) -> Result<Launch> {
    grid_2d("symmetrize", n, n, 8)
}

/// `transpose_lower_to_upper` of an [n, n] matrix: one 32×8-thread block per 32×32 tile.
pub fn transpose_lower_to_upper_geometry(n: usize) -> Result<Launch> {
    grid_2d("transpose_lower_to_upper", n, n, 32)
}

/// `sparsegpt_dead_inputs` and `sparsegpt_damp` over `cols` inputs: one thread per column.
pub fn per_column_geometry(cols: usize) -> Result<Launch> {
    Launch::grid_1d(cols, THREADS_1D)
}

/// `sparsegpt_block_scores` for a block of `count` columns of `rows` rows: one thread per score.
pub fn block_scores_geometry(rows: usize, count: usize) -> Result<Launch> {
    Launch::grid_1d(product("sparsegpt_block_scores", rows, count)?, THREADS_1D)
}

/// `sparsegpt_block_columns` over `rows` rows: blocks of 8 warps, one warp per row.
pub fn block_columns_geometry(rows: usize) -> Result<Launch> {
    let rows_per_block = (COLUMN_THREADS / 32) as usize;
    Ok(Launch {
        grid: (grid_u32("sparsegpt_block_columns", rows.div_ceil(rows_per_block))?, 1, 1),
        block: (COLUMN_THREADS, 1, 1),
        shared_bytes: 0,
    })
}

/// `sparsegpt_pack_mask` of keep bytes [rows, cols]: one thread per output byte
/// (rows·⌈cols/8⌉).
pub fn pack_mask_geometry(rows: usize, cols: usize) -> Result<Launch> {
    let len = product("sparsegpt_pack_mask", rows, crate::sparse::BitMask::stride_for(cols))?;
    Launch::grid_1d(len, THREADS_1D)
}

/// `L_kk = chol(A_kk)` for the diagonal block at `k0` of `a` [n, n] (lower triangle, in place);
/// a non-positive pivot writes `info = [pivot + 1, value]` (info: 2 elements).
pub fn chol_diag(
    dev: &CudaDevice,
    a: &mut CudaSlice<f64>,
    n: usize,
    k0: usize,
    info: &mut CudaSlice<f64>,
) -> Result<()> {
    expect_len("sparsegpt", "chol_diag a", a.len(), product("chol_diag", n, n)?)?;
    expect_len("sparsegpt", "chol_diag info", info.len(), 2)?;
    if k0 >= n {
        return Err(Error::invalid(format!("chol_diag: block start {k0} outside {n}x{n}")));
    }
    let (n_i, k0_i) = (to_i32("chol_diag", n)?, to_i32("chol_diag", k0)?);
    let f = dev.function("cholesky", "chol_diag")?;
    let cfg = LaunchConfig::from(chol_diag_geometry()?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(a).arg(&n_i).arg(&k0_i).arg(info);
    // SAFETY: a holds n·n and info 2 elements (checked above); the block reads and writes
    // rows and columns k0..min(k0 + 64, n) of a only.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Solves the panel below the diagonal block at `k0`: rows k0+64..n, columns k0..k0+64 of `a`,
/// written to `a` and contiguously to `panel` [n − k0 − 64, 64]. Needs k0 + 64 < n.
pub fn chol_panel(
    dev: &CudaDevice,
    a: &mut CudaSlice<f64>,
    panel: &mut CudaSlice<f64>,
    n: usize,
    k0: usize,
    info: &CudaSlice<f64>,
) -> Result<()> {
    expect_len("sparsegpt", "chol_panel a", a.len(), product("chol_panel", n, n)?)?;
    expect_len("sparsegpt", "chol_panel info", info.len(), 2)?;
    if k0 + CHOL_BLOCK >= n {
        return Err(Error::invalid(format!("chol_panel: no rows below the block at {k0} of {n}x{n}")));
    }
    let rest = n - k0 - CHOL_BLOCK;
    expect_len("sparsegpt", "chol_panel panel", panel.len(), product("chol_panel", rest, CHOL_BLOCK)?)?;
    let (n_i, k0_i) = (to_i32("chol_panel", n)?, to_i32("chol_panel", k0)?);
    let f = dev.function("cholesky", "chol_panel")?;
    let cfg = LaunchConfig::from(chol_panel_geometry(n, k0)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(a).arg(panel).arg(&n_i).arg(&k0_i).arg(info);
    // SAFETY: a holds n·n, panel (n − k0 − 64)·64 and info 2 elements (checked above); rows
    // at or beyond n are neither read nor written.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Inverts every 64×64 diagonal block of the lower-triangular `l` [n, n] into the same block
/// of `x` [n, n] (written in full, zeros above the diagonal).
pub fn trtri_diag(dev: &CudaDevice, l: &CudaSlice<f64>, x: &mut CudaSlice<f64>, n: usize) -> Result<()> {
    let nn = product("trtri_diag", n, n)?;
    expect_len("sparsegpt", "trtri_diag l", l.len(), nn)?;
    expect_len("sparsegpt", "trtri_diag x", x.len(), nn)?;
    let n_i = to_i32("trtri_diag", n)?;
    let f = dev.function("cholesky", "trtri_diag")?;
    let cfg = LaunchConfig::from(trtri_diag_geometry(n)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(l).arg(x).arg(&n_i);
    // SAFETY: l and x hold n·n elements (checked above); block k touches rows and columns
    // 64k..min(64k + 64, n) only.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// `a ← (a + aᵀ)/2` for `a` [n, n].
pub fn symmetrize(dev: &CudaDevice, a: &mut CudaSlice<f64>, n: usize) -> Result<()> {
    expect_len("sparsegpt", "symmetrize", a.len(), product("symmetrize", n, n)?)?;
    let n_i = to_i32("symmetrize", n)?;
    let f = dev.function("cholesky", "symmetrize")?;
    let cfg = LaunchConfig::from(symmetrize_geometry(n)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(a).arg(&n_i);
    // SAFETY: a holds n·n elements (checked above); threads outside the strict lower
    // triangle of [n, n] return at once.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// `u = Lᵀ` [n, n] from the lower triangle of `lower` [n, n], zeros below the diagonal.
pub fn transpose_lower_to_upper(
    dev: &CudaDevice,
    lower: &CudaSlice<f64>,
    u: &mut CudaSlice<f64>,
    n: usize,
) -> Result<()> {
    let nn = product("transpose_lower_to_upper", n, n)?;
    expect_len("sparsegpt", "transpose_lower_to_upper lower", lower.len(), nn)?;
    expect_len("sparsegpt", "transpose_lower_to_upper u", u.len(), nn)?;
    let n_i = to_i32("transpose_lower_to_upper", n)?;
    let f = dev.function("cholesky", "transpose_lower_to_upper")?;
    let cfg = LaunchConfig::from(transpose_lower_to_upper_geometry(n)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(lower).arg(u).arg(&n_i);
    // SAFETY: lower and u hold n·n elements (checked above); tile elements at or beyond n
    // are skipped.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Row-major DGEMM `c = alpha·op(a)·op(b) (+ c when accumulate)`, the device twin of
/// [`crate::linalg::gemm_f64`]: c [m, n] with row stride `ldc`, op(a) [m, k] (stored
/// [k, m] when `a_t`), op(b) [k, n] (stored [n, k] when `b_t`). Issued as the column-major
/// product cᵀ = op(b)ᵀ·op(a)ᵀ on the same buffers. Views may start anywhere in a buffer.
#[allow(clippy::too_many_arguments)]
pub fn gemm<A: DevicePtr<f64>, B: DevicePtr<f64>, C: DevicePtrMut<f64>>(
    dev: &CudaDevice,
    m: usize,
    n: usize,
    k: usize,
    c: &mut C,
    ldc: usize,
    accumulate: bool,
    alpha: f64,
    a: &A,
    lda: usize,
    a_t: bool,
    b: &B,
    ldb: usize,
    b_t: bool,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        return Err(Error::invalid(format!("gemm: inner dimension 0 for a {m}x{n} product")));
    }
    // A stored [rows, cols] row-major with row stride ld spans (rows − 1)·ld + cols elements.
    let operand = |what: &str, len: usize, rows: usize, cols: usize, ld: usize| -> Result<()> {
        if ld < cols {
            return Err(Error::invalid(format!("gemm: {what} row stride {ld} < {cols} columns")));
        }
        let need = (rows - 1).checked_mul(ld).and_then(|v| v.checked_add(cols));
        let need = need.ok_or_else(|| Error::invalid(format!("gemm: {what} of {rows}x{cols} overflows")))?;
        expect_len("sparsegpt", &format!("gemm {what}"), len, need)
    };
    operand("c", c.len(), m, n, ldc)?;
    let (a_rows, a_cols) = if a_t { (k, m) } else { (m, k) };
    operand("a", a.len(), a_rows, a_cols, lda)?;
    let (b_rows, b_cols) = if b_t { (n, k) } else { (k, n) };
    operand("b", b.len(), b_rows, b_cols, ldb)?;
    let cfg = GemmConfig {
        // Column-major, b row-major is op(b)ᵀ as stored (N) or needs a transpose (T); same for a.
        transa: if b_t { CUBLAS_OP_T } else { CUBLAS_OP_N },
        transb: if a_t { CUBLAS_OP_T } else { CUBLAS_OP_N },
        m: to_i32("gemm", n)?,
        n: to_i32("gemm", m)?,
        k: to_i32("gemm", k)?,
        alpha,
        lda: to_i32("gemm", ldb)?,
        ldb: to_i32("gemm", lda)?,
        beta: if accumulate { 1.0 } else { 0.0 },
        ldc: to_i32("gemm", ldc)?,
    };
    // SAFETY: c, a and b span at least the elements their shapes and strides address
    // (checked above); with beta = 0 cuBLAS does not read c.
    unsafe { dev.blas().gemm(cfg, b, a, c) }?;
    Ok(())
}

/// SparseGPT step 1 on the device: `diag[j]` = H_jj, or 1 for a dead input (H_jj = 0), whose
/// weight column is then zeroed. h [cols, cols], w [rows, cols], diag: cols elements.
pub fn dead_inputs(
    dev: &CudaDevice,
    h: &CudaSlice<f64>,
    w: &mut CudaSlice<f64>,
    diag: &mut CudaSlice<f64>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    expect_len("sparsegpt", "sparsegpt h", h.len(), product("sparsegpt", cols, cols)?)?;
    expect_len("sparsegpt", "sparsegpt w", w.len(), product("sparsegpt", rows, cols)?)?;
    expect_len("sparsegpt", "sparsegpt diag", diag.len(), cols)?;
    let (rows_i, cols_i) = (to_i32("sparsegpt", rows)?, to_i32("sparsegpt", cols)?);
    let f = dev.function("sparsegpt", "sparsegpt_dead_inputs")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(h).arg(w).arg(diag).arg(&rows_i).arg(&cols_i);
    // SAFETY: h holds cols·cols, w rows·cols, diag cols elements (checked above); thread j
    // touches column j only.
    unsafe { b.launch(LaunchConfig::from(per_column_geometry(cols)?)) }?;
    Ok(())
}

/// SparseGPT step 2: `h[j, j] = diag[j] + damp`. h [cols, cols], diag: cols elements.
pub fn damp(dev: &CudaDevice, h: &mut CudaSlice<f64>, diag: &CudaSlice<f64>, cols: usize, damp: f64) -> Result<()> {
    expect_len("sparsegpt", "sparsegpt damp h", h.len(), product("sparsegpt", cols, cols)?)?;
    expect_len("sparsegpt", "sparsegpt damp diag", diag.len(), cols)?;
    let cols_i = to_i32("sparsegpt", cols)?;
    let f = dev.function("sparsegpt", "sparsegpt_damp")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(h).arg(diag).arg(&cols_i).arg(&damp);
    // SAFETY: h holds cols·cols and diag cols elements (checked above).
    unsafe { b.launch(LaunchConfig::from(per_column_geometry(cols)?)) }?;
    Ok(())
}

fn check_block(
    what: &str,
    w_len: usize,
    u_len: usize,
    rows: usize,
    cols: usize,
    i1: usize,
    count: usize,
) -> Result<()> {
    expect_len("sparsegpt", &format!("{what} w"), w_len, product(what, rows, cols)?)?;
    expect_len("sparsegpt", &format!("{what} u"), u_len, product(what, cols, cols)?)?;
    if count == 0 || i1.checked_add(count).is_none_or(|end| end > cols) {
        return Err(Error::invalid(format!("{what}: block of {count} columns at {i1} outside {cols} columns")));
    }
    Ok(())
}

/// The block's f32 scores [rows·count]: `(W[r, i1+c]² / U[i1+c, i1+c]²) as f32` at r·count + c.
pub fn block_scores(
    dev: &CudaDevice,
    w: &CudaSlice<f64>,
    u: &CudaSlice<f64>,
    rows: usize,
    cols: usize,
    i1: usize,
    count: usize,
) -> Result<CudaBuffer<f32>> {
    check_block("sparsegpt_block_scores", w.len(), u.len(), rows, cols, i1, count)?;
    let len = product("sparsegpt_block_scores", rows, count)?;
    let mut scores = dev.alloc::<f32>(len)?;
    let [rows_i, cols_i, i1_i, count_i] = to_i32s("sparsegpt_block_scores", [rows, cols, i1, count])?;
    let f = dev.function("sparsegpt", "sparsegpt_block_scores")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(u).arg(scores.slice_mut()).arg(&rows_i).arg(&cols_i).arg(&i1_i).arg(&count_i);
    // SAFETY: w holds rows·cols, u cols·cols, scores rows·count elements and i1 + count ≤ cols
    // (checked above); one thread per score.
    unsafe { b.launch(LaunchConfig::from(block_scores_geometry(rows, count)?)) }?;
    Ok(scores)
}

/// Where the column kernel takes its keep decisions from.
#[derive(Clone, Copy)]
pub enum BlockKeep<'a> {
    /// Unstructured: packed bits over the block's flat [rows·count] scores (1 = kept).
    Selected(&'a CudaSlice<u8>),
    /// N:M inside the loop: keep `n` of every `m` columns from the current values.
    NM {
        /// Kept per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

/// The sequential column loop of one block [i1, i1 + count) on `w` [rows, cols] in place.
/// Writes the errors to `err1` [rows, count] and the decisions to `keep` [rows, cols]
/// (one byte per element, 1 = kept) for the block's columns.
#[allow(clippy::too_many_arguments)]
pub fn block_columns(
    dev: &CudaDevice,
    w: &mut CudaSlice<f64>,
    u: &CudaSlice<f64>,
    decide: BlockKeep<'_>,
    keep: &mut CudaSlice<u8>,
    err1: &mut CudaSlice<f64>,
    rows: usize,
    cols: usize,
    i1: usize,
    count: usize,
) -> Result<()> {
    const WHAT: &str = "sparsegpt_block_columns";
    check_block(WHAT, w.len(), u.len(), rows, cols, i1, count)?;
    if count > MAX_BLOCK_COLUMNS {
        return Err(Error::invalid(format!("{WHAT}: {count} columns per block, at most {MAX_BLOCK_COLUMNS}")));
    }
    let flat = product(WHAT, rows, count)?;
    expect_len("sparsegpt", &format!("{WHAT} keep"), keep.len(), product(WHAT, rows, cols)?)?;
    expect_len("sparsegpt", &format!("{WHAT} err1"), err1.len(), flat)?;
    let (nm_n, nm_m) = match decide {
        BlockKeep::Selected(bits) => {
            expect_len("sparsegpt", &format!("{WHAT} selection"), bits.len(), flat.div_ceil(8))?;
            (0, 0)
        }
        BlockKeep::NM { n, m } => {
            if n == 0 || n >= m || !count.is_multiple_of(m) {
                return Err(Error::invalid(format!("{WHAT}: {n}:{m} groups in a block of {count} columns")));
            }
            (n, m)
        }
    };
    let [rows_i, cols_i, i1_i, count_i, n_i, m_i] = to_i32s(WHAT, [rows, cols, i1, count, nm_n, nm_m])?;
    let cfg = LaunchConfig::from(block_columns_geometry(rows)?);
    let f = dev.function("sparsegpt", WHAT)?;
    let null: u64 = 0;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(u);
    match decide {
        BlockKeep::Selected(bits) => b.arg(bits),
        // A null pointer: the kernel then decides N:M groups itself.
        BlockKeep::NM { .. } => b.arg(&null),
    };
    b.arg(keep).arg(err1).arg(&rows_i).arg(&cols_i).arg(&i1_i).arg(&count_i).arg(&n_i).arg(&m_i);
    // SAFETY: w and keep hold rows·cols, u cols·cols, err1 rows·count elements, the selection
    // ⌈rows·count/8⌉ bytes, i1 + count ≤ cols and count ≤ 256 (checked above); warp r
    // touches row r only.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Packs per-element keep bytes [rows, cols] into the [`crate::sparse::BitMask`] layout
/// [rows, ⌈cols/8⌉].
pub fn pack_mask(dev: &CudaDevice, keep: &CudaSlice<u8>, rows: usize, cols: usize) -> Result<CudaBuffer<u8>> {
    const WHAT: &str = "sparsegpt_pack_mask";
    expect_len("sparsegpt", WHAT, keep.len(), product(WHAT, rows, cols)?)?;
    let stride = crate::sparse::BitMask::stride_for(cols);
    let len = product(WHAT, rows, stride)?;
    let mut bits = dev.alloc::<u8>(len)?;
    let (rows_i, cols_i, stride_i) = (to_i32(WHAT, rows)?, to_i32(WHAT, cols)?, to_i32(WHAT, stride)?);
    let f = dev.function("sparsegpt", WHAT)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(keep).arg(bits.slice_mut()).arg(&rows_i).arg(&cols_i).arg(&stride_i);
    // SAFETY: keep holds rows·cols and bits rows·stride elements (checked above); one thread
    // per output byte.
    unsafe { b.launch(LaunchConfig::from(pack_mask_geometry(rows, cols)?)) }?;
    Ok(bits)
}
