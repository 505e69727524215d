//! Launches `cuda/prune_stats.cu` (column statistics, f64 widening, scaler_row) and the
//! cuBLAS DGEMM behind `XᵀX += XᵀX_chunk`.

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::expect_len;
use crate::ops::to_i32;
use crate::{Error, Result};

const THREADS: u32 = 256;

/// Tokens per partial sum of a sequence. Fixed (not derived from the GPU) so that results do
/// not depend on the device; with `seq_len ≤ 128` a sequence is one chunk and the sums are
/// formed in exactly the CPU reference's order.
pub const CHUNK_TOKENS: usize = 128;

/// Bytes of the f64 copy of X that one DGEMM reads; longer inputs go through in slabs.
const XTX_SLAB_BYTES: usize = 128 << 20;

/// The two launches that add the column statistics of x [seqs, seq_len, dim].
#[derive(Clone, Copy, Debug)]
pub struct ColumnsGeometry {
    /// Chunks of [`CHUNK_TOKENS`] tokens per sequence (the kernels' `chunks` argument).
    pub chunks: usize,
    /// `stats_partial_*`: grid (seqs·chunks, ⌈dim / 256⌉) into partial [seqs·chunks, 2, dim].
    pub partial: Launch,
    /// `stats_reduce`: one thread per column, ⌈dim / 256⌉ blocks.
    pub reduce: Launch,
}

/// Geometry of the column statistics' kernels for x [seqs, seq_len, dim].
pub fn columns_geometry(seqs: usize, seq_len: usize, dim: usize) -> Result<ColumnsGeometry> {
    let chunks = seq_len.div_ceil(CHUNK_TOKENS);
    // Non-negative by construction, so the cast is exact.
    let seq_chunks = to_i32("prune_stats", seqs * chunks)? as u32;
    let col_blocks = u16::try_from(dim.div_ceil(THREADS as usize))
        .map_err(|_| Error::invalid(format!("prune_stats: width {dim} exceeds one CUDA grid")))?;
    let partial = Launch { grid: (seq_chunks, u32::from(col_blocks), 1), block: (THREADS, 1, 1), shared_bytes: 0 };
    Ok(ColumnsGeometry { chunks, partial, reduce: Launch::grid_1d(dim, THREADS)? })
}

/// Geometry of `stats_scaler_row`: one thread per column.
pub fn scaler_row_geometry(dim: usize) -> Result<Launch> {
    Launch::grid_1d(dim, THREADS)
}

/// Adds the column statistics of x [seqs, seq_len, dim] to the three outputs \[dim\] (sizes
/// non-zero; lengths checked here).
#[allow(clippy::too_many_arguments)]
pub fn accumulate_columns<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    sq_norms: &mut CudaSlice<f64>,
    sums: &mut CudaSlice<f64>,
    seq_var_sum: &mut CudaSlice<f64>,
    seqs: usize,
    seq_len: usize,
    dim: usize,
) -> Result<()> {
    let op = "prune_stats";
    if seqs == 0 || seq_len == 0 || dim == 0 {
        return Err(Error::invalid(format!("{op}: empty input [{seqs}, {seq_len}, {dim}]")));
    }
    expect_len(op, "x", x.len(), seqs.saturating_mul(seq_len).saturating_mul(dim))?;
    for (what, out) in [("sq_norms", &*sq_norms), ("sums", &*sums), ("seq_var_sum", &*seq_var_sum)] {
        expect_len(op, what, out.len(), dim)?;
    }
    let ColumnsGeometry { chunks, partial: partial_launch, reduce } = columns_geometry(seqs, seq_len, dim)?;
    let (seqs_i, len_i, dim_i) = (to_i32(op, seqs)?, to_i32(op, seq_len)?, to_i32(op, dim)?);
    let (chunk_i, chunks_i) = (to_i32(op, CHUNK_TOKENS)?, to_i32(op, chunks)?);

    // partial: [seqs·chunks, 2, dim] (chunk sums of x and x²).
    let mut partial = dev.alloc::<f64>(seqs * chunks * 2 * dim)?;
    let f = dev.function("prune_stats", &format!("stats_partial_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(partial.slice_mut()).arg(&seqs_i).arg(&len_i).arg(&dim_i).arg(&chunk_i).arg(&chunks_i);
    // SAFETY: x holds seqs·seq_len·dim elements (checked above) and partial seqs·chunks·2·dim;
    // block (sc, cb)
    // reads tokens below seq_len of sequence sc / chunks < seqs and columns below dim.
    unsafe { b.launch(LaunchConfig::from(partial_launch)) }?;

    let f = dev.function("prune_stats", "stats_reduce")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(partial.slice()).arg(sq_norms).arg(sums).arg(seq_var_sum);
    b.arg(&seqs_i).arg(&len_i).arg(&dim_i).arg(&chunks_i);
    // SAFETY: partial holds seqs·chunks·2·dim elements, the three outputs dim each; one thread
    // per column below dim.
    unsafe { b.launch(LaunchConfig::from(reduce)) }?;
    Ok(())
}

/// `xtx += Xᵀ·X` in f64 for x [tokens, dim] row-major and xtx [dim, dim] (sizes non-zero;
/// lengths checked here).
///
/// Row-major X is the column-major matrix Xᵀ [dim, tokens] (ld = dim), so the column-major
/// product Xᵀ·(Xᵀ)ᵀ = XᵀX is one DGEMM (N, T). XᵀX is symmetric, so its column-major and
/// row-major layouts agree. X is widened to f64 in slabs of whole tokens, β = 1 accumulates.
pub fn accumulate_xtx<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    xtx: &mut CudaSlice<f64>,
    tokens: usize,
    dim: usize,
) -> Result<()> {
    let op = "prune_stats xtx";
    expect_len(op, "x", x.len(), tokens.saturating_mul(dim))?;
    expect_len(op, "xtx", xtx.len(), dim.saturating_mul(dim))?;
    let slab = (XTX_SLAB_BYTES / (8 * dim)).clamp(1, tokens);
    let mut x64 = dev.alloc::<f64>(slab * dim)?;
    let dim_i = to_i32(op, dim)?;
    let mut start = 0;
    while start < tokens {
        let len = slab.min(tokens - start);
        let (offset, n) = (start * dim, len * dim);
        // x[offset .. offset + n] with offset + n ≤ tokens·dim; x64 holds slab·dim ≥ n.
        crate::ops::cast::cuda::widen_to_f64(dev, &x.slice(offset..offset + n), x64.slice_mut(), n)?;
        let cfg = GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_T,
            m: dim_i,
            n: dim_i,
            k: to_i32(op, len)?,
            alpha: 1.0,
            lda: dim_i,
            ldb: dim_i,
            beta: 1.0,
            ldc: dim_i,
        };
        // SAFETY: A = B = x64 as a column-major [dim, len] matrix (ld dim, len·dim ≤ its length);
        // C = xtx [dim, dim] (ld dim, dim·dim elements, checked above).
        unsafe { dev.blas().gemm(cfg, x64.slice(), x64.slice(), xtx) }?;
        start += len;
    }
    Ok(())
}

/// `out[j] = sq_norms[j] / sequences` for j < dim.
pub fn scaler_row(
    dev: &CudaDevice,
    sq_norms: &CudaSlice<f64>,
    out: &mut CudaSlice<f64>,
    sequences: f64,
    dim: usize,
) -> Result<()> {
    let op = "prune_stats scaler_row";
    expect_len(op, "sq_norms", sq_norms.len(), dim)?;
    expect_len(op, "out", out.len(), dim)?;
    let dim_i = to_i32(op, dim)?;
    let f = dev.function("prune_stats", "stats_scaler_row")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(sq_norms).arg(out).arg(&sequences).arg(&dim_i);
    // SAFETY: sq_norms and out hold dim elements (checked above); one thread per column below dim.
    unsafe { b.launch(LaunchConfig::from(scaler_row_geometry(dim)?)) }?;
    Ok(())
}
