//! Launches `cuda/prune_select.cu`: scores (elementwise, RIA's row and column sums), the
//! per-row radix select, the multi-block flat select, N:M selection and mask application.
//! Each launcher checks its buffers' lengths against the sizes it is given (the shapes
//! themselves are checked by `ops::prune_select`).

use crate::ops::expect_len;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::{grid_1d, CudaFloat};
use crate::device::CudaDevice;
use crate::ops::to_i32;
use crate::sparse::check_nm;
use crate::{Error, Result};

/// Threads per block; the selection kernels require exactly this (one radix bin each).
const THREADS: u32 = 256;
/// Rows per partial column sum in RIA.
const RIA_ROWS_PER_CHUNK: usize = 128;
/// Elements per block in the flat select's final passes (a multiple of [`THREADS`]).
const FLAT_CHUNK: usize = 8192;
/// Scores per block of a flat histogram pass, and the most blocks (they grid-stride).
const FLAT_HIST_PER_BLOCK: usize = 4096;
const FLAT_HIST_BLOCKS: usize = 1024;

/// Grid (rows, column tiles of [`THREADS`]) for kernels with one thread per element.
fn row_tile_grid(op: &'static str, rows: usize, cols: usize) -> Result<LaunchConfig> {
    let rows = to_i32(op, rows)? as u32;
    let tiles = u16::try_from(cols.div_ceil(THREADS as usize))
        .map_err(|_| Error::invalid(format!("{op}: {cols} columns exceed one CUDA grid")))?;
    Ok(LaunchConfig { grid_dim: (rows, u32::from(tiles), 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// out = |w| (n elements each).
pub fn magnitude<T: CudaFloat>(dev: &CudaDevice, w: &CudaSlice<T>, out: &mut CudaSlice<f32>, n: usize) -> Result<()> {
    expect_len("magnitude_scores", "w", w.len(), n)?;
    expect_len("magnitude_scores", "out", out.len(), n)?;
    let f = dev.function("prune_select", &format!("magnitude_scores_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(out).arg(&n);
    // SAFETY: w and out hold n elements (checked above); the kernel grid-strides below n.
    unsafe { b.launch(grid_1d(n.min(1 << 24), THREADS)?) }?;
    Ok(())
}

/// out = |w_ij|·sqrt(scaler_row_j). w, out: rows·cols; scaler_row: cols.
pub fn wanda<T: CudaFloat>(
    dev: &CudaDevice,
    w: &CudaSlice<T>,
    scaler_row: &CudaSlice<f64>,
    out: &mut CudaSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "wanda_scores";
    let elems = rows.saturating_mul(cols);
    expect_len(op, "w", w.len(), elems)?;
    expect_len(op, "out", out.len(), elems)?;
    expect_len(op, "scaler_row", scaler_row.len(), cols)?;
    let cfg = row_tile_grid(op, rows, cols)?;
    let (rows_i, cols_i) = (to_i32(op, rows)?, to_i32(op, cols)?);
    let f = dev.function("prune_select", &format!("wanda_scores_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(scaler_row).arg(out).arg(&rows_i).arg(&cols_i);
    // SAFETY: w and out hold rows·cols elements, scaler_row cols (checked above); threads
    // with row < rows and column < cols touch one element each.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// RIA scores: column sums (per row chunk, then reduced), row sums, activations, then the
/// elementwise formula. w, out: rows·cols; scaler_row: cols.
pub fn ria<T: CudaFloat>(
    dev: &CudaDevice,
    w: &CudaSlice<T>,
    scaler_row: &CudaSlice<f64>,
    a: f64,
    out: &mut CudaSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "ria_scores";
    let elems = rows.saturating_mul(cols);
    expect_len(op, "w", w.len(), elems)?;
    expect_len(op, "out", out.len(), elems)?;
    expect_len(op, "scaler_row", scaler_row.len(), cols)?;
    let (rows_i, cols_i) = (to_i32(op, rows)?, to_i32(op, cols)?);
    let chunks = rows.div_ceil(RIA_ROWS_PER_CHUNK);
    let (rpc_i, chunks_i) = (to_i32(op, RIA_ROWS_PER_CHUNK)?, to_i32(op, chunks)?);

    // partial: [chunks, cols]; col_sum: [cols]; row_sum: [rows]; act: [cols].
    let mut partial = dev.alloc::<f64>(chunks * cols)?;
    let mut col_sum = dev.alloc::<f64>(cols)?;
    let mut row_sum = dev.alloc::<f64>(rows)?;
    let mut act = dev.alloc::<f64>(cols)?;

    let f = dev.function("prune_select", &format!("ria_col_partial_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(partial.slice_mut()).arg(&rows_i).arg(&cols_i).arg(&rpc_i);
    // SAFETY: w holds rows·cols elements (checked above) and partial chunks·cols; block
    // (chunk, tile) reads rows below `rows` of its chunk < chunks, columns below cols.
    unsafe { b.launch(row_tile_grid(op, chunks, cols)?) }?;

    let f = dev.function("prune_select", "ria_col_reduce")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(partial.slice()).arg(col_sum.slice_mut()).arg(&chunks_i).arg(&cols_i);
    // SAFETY: partial holds chunks·cols elements, col_sum cols; one thread per column < cols.
    unsafe { b.launch(grid_1d(cols, THREADS)?) }?;

    let f = dev.function("prune_select", &format!("ria_row_sum_{}", T::SUFFIX))?;
    let cfg = LaunchConfig { grid_dim: (rows_i as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(row_sum.slice_mut()).arg(&rows_i).arg(&cols_i);
    // SAFETY: w holds rows·cols elements, row_sum rows; block r < rows reads row r only.
    unsafe { b.launch(cfg) }?;

    let f = dev.function("prune_select", "ria_act")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(scaler_row).arg(act.slice_mut()).arg(&a).arg(&cols_i);
    // SAFETY: scaler_row and act hold cols elements; one thread per column < cols.
    unsafe { b.launch(grid_1d(cols, THREADS)?) }?;

    let f = dev.function("prune_select", &format!("ria_scores_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(col_sum.slice()).arg(row_sum.slice()).arg(act.slice()).arg(out).arg(&rows_i).arg(&cols_i);
    // SAFETY: w and out hold rows·cols elements, col_sum and act cols, row_sum rows; threads
    // with row < rows and column < cols touch one element each.
    unsafe { b.launch(row_tile_grid(op, rows, cols)?) }?;
    Ok(())
}

/// Prunes the `k` (≤ cols) lowest scores of every row. scores: rows·cols; mask: rows·stride
/// with stride = ceil(cols/8).
pub fn select_rows_lowest(
    dev: &CudaDevice,
    scores: &CudaSlice<f32>,
    mask: &mut CudaSlice<u8>,
    rows: usize,
    cols: usize,
    k: usize,
) -> Result<()> {
    let op = "select";
    let stride = cols.div_ceil(8);
    expect_len(op, "scores", scores.len(), rows.saturating_mul(cols))?;
    expect_len(op, "mask", mask.len(), rows.saturating_mul(stride))?;
    if k > cols {
        return Err(Error::invalid(format!("{op}: cannot prune {k} of {cols} columns")));
    }
    let (rows_i, cols_i, stride_i, k_i) = (to_i32(op, rows)?, to_i32(op, cols)?, to_i32(op, stride)?, to_i32(op, k)?);
    let f = dev.function("prune_select", "select_rows_lowest")?;
    let cfg = LaunchConfig { grid_dim: (rows_i as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut b = dev.stream().launch_builder(&f);
    b.arg(scores).arg(mask).arg(&rows_i).arg(&cols_i).arg(&stride_i).arg(&k_i);
    // SAFETY: scores holds rows·cols elements and mask rows·stride bytes (checked above);
    // block r < rows reads row r's cols scores and writes its stride bytes; k ≤ cols; the
    // block has THREADS = 256 threads, as the kernel requires.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Prunes the `k` (≤ n) lowest of n scores as one row. mask: ceil(n/8) bytes.
pub fn select_flat_lowest(
    dev: &CudaDevice,
    scores: &CudaSlice<f32>,
    mask: &mut CudaSlice<u8>,
    n: usize,
    k: usize,
) -> Result<()> {
    let op = "select_flat_lowest";
    expect_len(op, "scores", scores.len(), n)?;
    expect_len(op, "mask", mask.len(), n.div_ceil(8))?;
    if n == 0 || k > n {
        return Err(Error::invalid(format!("{op}: cannot prune {k} of {n} scores")));
    }
    // The kernels form chunk ends as b·chunk + chunk in i32.
    to_i32(op, n + FLAT_CHUNK)?;
    let (n_i, chunk_i) = (to_i32(op, n)?, to_i32(op, FLAT_CHUNK)?);
    let k_u32 = u32::try_from(k).map_err(|_| Error::invalid(format!("{op}: k = {k} exceeds u32")))?;
    // state = {prefix of the k-th smallest key, how many keys equal to it are pruned}.
    let mut state = dev.htod(&[0u32, k_u32])?;
    if k > 0 {
        let mut hist = dev.alloc_zeros::<u32>(THREADS as usize)?;
        let hist_blocks = n.div_ceil(FLAT_HIST_PER_BLOCK).clamp(1, FLAT_HIST_BLOCKS) as u32;
        let hist_cfg = LaunchConfig { grid_dim: (hist_blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let f_hist = dev.function("prune_select", "select_flat_hist")?;
        let f_choose = dev.function("prune_select", "select_flat_choose")?;
        for shift in [24i32, 16, 8, 0] {
            let mut b = dev.stream().launch_builder(&f_hist);
            b.arg(scores).arg(&n_i).arg(&shift).arg(state.slice()).arg(hist.slice_mut());
            // SAFETY: scores holds n elements (checked above; grid-strided below n), state 2
            // words, hist THREADS = 256 words, one per thread of a 256-thread block.
            unsafe { b.launch(hist_cfg) }?;
            let mut b = dev.stream().launch_builder(&f_choose);
            b.arg(hist.slice_mut()).arg(state.slice_mut()).arg(&shift);
            // SAFETY: one block of THREADS = 256 threads over hist's 256 words; state holds 2.
            unsafe { b.launch(one_block) }?;
        }
    }
    let blocks = n.div_ceil(FLAT_CHUNK);
    let mut counts = dev.alloc::<u32>(blocks)?;
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let f = dev.function("prune_select", "select_flat_count_equal")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(scores).arg(&n_i).arg(&chunk_i).arg(state.slice()).arg(counts.slice_mut());
    // SAFETY: block b < blocks = ceil(n / chunk) reads scores [b·chunk, min(n, (b+1)·chunk))
    // and writes counts[b]; state holds 2 words.
    unsafe { b.launch(cfg) }?;
    let f = dev.function("prune_select", "select_flat_write")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(scores).arg(mask).arg(&n_i).arg(&chunk_i).arg(state.slice()).arg(counts.slice());
    // SAFETY: block b reads counts[0..b) and scores of its chunk, and writes the mask bytes of
    // its chunk (below ceil(n/8), mask's length); 256 threads as the kernel requires.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// N:M selection. scores: rows·cols (m divides cols); mask: rows·ceil(cols/8).
pub fn select_nm(
    dev: &CudaDevice,
    scores: &CudaSlice<f32>,
    mask: &mut CudaSlice<u8>,
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
) -> Result<()> {
    let op = "select N:M";
    check_nm(n, m, cols)?;
    let cfg = row_tile_grid(op, rows, cols)?;
    let stride = cols.div_ceil(8);
    expect_len(op, "scores", scores.len(), rows.saturating_mul(cols))?;
    expect_len(op, "mask", mask.len(), rows.saturating_mul(stride))?;
    let (rows_i, cols_i, stride_i) = (to_i32(op, rows)?, to_i32(op, cols)?, to_i32(op, stride)?);
    let (n_i, m_i) = (to_i32(op, n)?, to_i32(op, m)?);
    let f = dev.function("prune_select", "select_nm")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(scores).arg(mask).arg(&rows_i).arg(&cols_i).arg(&stride_i).arg(&n_i).arg(&m_i);
    // SAFETY: scores holds rows·cols elements and mask rows·stride bytes (checked above);
    // 0 < n < m and m divides cols (check_nm), so a column's group lies inside its row;
    // 256 threads as the kernel requires.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// out = w where mask keeps, 0 elsewhere. w, out: rows·cols; mask: rows·ceil(cols/8).
pub fn apply_mask<T: CudaFloat>(
    dev: &CudaDevice,
    w: &CudaSlice<T>,
    mask: &CudaSlice<u8>,
    out: &mut CudaSlice<T>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "apply_mask";
    let cfg = row_tile_grid(op, rows, cols)?;
    let stride = cols.div_ceil(8);
    expect_len(op, "w", w.len(), rows.saturating_mul(cols))?;
    expect_len(op, "out", out.len(), rows.saturating_mul(cols))?;
    expect_len(op, "mask", mask.len(), rows.saturating_mul(stride))?;
    let (rows_i, cols_i, stride_i) = (to_i32(op, rows)?, to_i32(op, cols)?, to_i32(op, stride)?);
    let f = dev.function("prune_select", &format!("apply_mask_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(mask).arg(out).arg(&rows_i).arg(&cols_i).arg(&stride_i);
    // SAFETY: w and out hold rows·cols elements, mask rows·stride bytes (checked above);
    // threads with row < rows and column < cols touch one element and one mask byte each.
    unsafe { b.launch(cfg) }?;
    Ok(())
}
