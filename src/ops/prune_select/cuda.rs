//! Launches `cuda/prune_select.cu`: scores (elementwise, RIA's row and column sums), the
//! per-row radix select, the multi-block flat select, N:M selection and mask application.
//! Each launcher checks its buffers' lengths against the sizes it is given (the shapes
//! themselves are checked by `ops::prune_select`). The launch geometry of every kernel is a
//! `…_geometry` function of plain numbers, which tests/cuda_on_cpu runs the kernels with.

use crate::ops::expect_len;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::to_i32;
use crate::sparse::check_nm;
use crate::{Error, Result};

/// Threads per block; the selection kernels require exactly this (one radix bin each).
pub const THREADS: u32 = 256;
/// Rows per partial column sum in RIA.
pub const RIA_ROWS_PER_CHUNK: usize = 128;
/// Elements per block in the flat select's final passes (a multiple of [`THREADS`]).
pub const FLAT_CHUNK: usize = 8192;
/// Scores per block of a flat histogram pass.
pub const FLAT_HIST_PER_BLOCK: usize = 4096;
/// The most blocks of a flat histogram pass.
pub const FLAT_HIST_BLOCKS: usize = 1024;
/// Threads of the largest `magnitude_scores_*` grid; longer inputs take more than one
/// grid-stride step.
pub const MAX_GRID_THREADS: usize = 1 << 24;

/// One block of [`THREADS`] threads.
fn blocks_of_threads(grid: (u32, u32, u32)) -> Launch {
    Launch { grid, block: (THREADS, 1, 1), shared_bytes: 0 }
}

/// Grid (rows, column tiles of [`THREADS`]) for kernels with one thread per element
/// (`wanda_scores_*`, `ria_scores_*`, `ria_col_partial_*` with row chunks for rows,
/// `select_nm`, `apply_mask_*`).
pub fn row_tiles_geometry(op: &'static str, rows: usize, cols: usize) -> Result<Launch> {
    let rows = to_i32(op, rows)? as u32;
    let tiles = u16::try_from(cols.div_ceil(THREADS as usize))
        .map_err(|_| Error::invalid(format!("{op}: {cols} columns exceed one CUDA grid")))?;
    Ok(blocks_of_threads((rows, u32::from(tiles), 1)))
}

/// `magnitude_scores_*` over n elements: one thread per element up to
/// [`MAX_GRID_THREADS`], grid-striding beyond.
pub fn magnitude_geometry(n: usize) -> Result<Launch> {
    Launch::grid_1d(n.min(MAX_GRID_THREADS), THREADS)
}

/// The five launches of RIA's scores for w [rows, cols].
#[derive(Clone, Copy, Debug)]
pub struct RiaGeometry {
    /// Chunks of [`RIA_ROWS_PER_CHUNK`] rows (the rows of the partial column sums).
    pub chunks: usize,
    /// `ria_col_partial_*`: grid (chunks, ⌈cols / 256⌉) into partial [chunks, cols].
    pub col_partial: Launch,
    /// `ria_col_reduce`: one thread per column.
    pub col_reduce: Launch,
    /// `ria_row_sum_*`: one block per row.
    pub row_sum: Launch,
    /// `ria_act`: one thread per column.
    pub act: Launch,
    /// `ria_scores_*`: grid (rows, ⌈cols / 256⌉).
    pub scores: Launch,
}

/// Geometry of RIA's kernels for w [rows, cols].
pub fn ria_geometry(rows: usize, cols: usize) -> Result<RiaGeometry> {
    let op = "ria_scores";
    let chunks = rows.div_ceil(RIA_ROWS_PER_CHUNK);
    Ok(RiaGeometry {
        chunks,
        col_partial: row_tiles_geometry(op, chunks, cols)?,
        col_reduce: Launch::grid_1d(cols, THREADS)?,
        row_sum: per_row_geometry(op, rows)?,
        act: Launch::grid_1d(cols, THREADS)?,
        scores: row_tiles_geometry(op, rows, cols)?,
    })
}

/// One block of [`THREADS`] threads per row (`select_rows_lowest`, `ria_row_sum_*`).
pub fn per_row_geometry(op: &'static str, rows: usize) -> Result<Launch> {
    Ok(blocks_of_threads((to_i32(op, rows)? as u32, 1, 1)))
}

/// The launches of the flat select over n scores.
#[derive(Clone, Copy, Debug)]
pub struct FlatGeometry {
    /// Blocks of the final passes: ⌈n / [`FLAT_CHUNK`]⌉ (the length of `counts`).
    pub blocks: usize,
    /// `select_flat_hist`: ⌈n / [`FLAT_HIST_PER_BLOCK`]⌉ blocks, 1 to [`FLAT_HIST_BLOCKS`]
    /// (grid-striding).
    pub hist: Launch,
    /// `select_flat_choose`: one block.
    pub choose: Launch,
    /// `select_flat_count_equal` and `select_flat_write`: one block per chunk of
    /// [`FLAT_CHUNK`] scores.
    pub chunks: Launch,
}

/// Geometry of the flat select's kernels over n scores.
pub fn flat_geometry(n: usize) -> Result<FlatGeometry> {
    let op = "select_flat_lowest";
    let hist_blocks = n.div_ceil(FLAT_HIST_PER_BLOCK).clamp(1, FLAT_HIST_BLOCKS);
    let blocks = n.div_ceil(FLAT_CHUNK);
    Ok(FlatGeometry {
        blocks,
        hist: blocks_of_threads((to_i32(op, hist_blocks)? as u32, 1, 1)),
        choose: blocks_of_threads((1, 1, 1)),
        chunks: blocks_of_threads((to_i32(op, blocks)? as u32, 1, 1)),
    })
}

/// out = |w| (n elements each).
pub fn magnitude<T: CudaFloat>(dev: &CudaDevice, w: &CudaSlice<T>, out: &mut CudaSlice<f32>, n: usize) -> Result<()> {
    expect_len("magnitude_scores", "w", w.len(), n)?;
    expect_len("magnitude_scores", "out", out.len(), n)?;
    let f = dev.function("prune_select", &format!("magnitude_scores_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(out).arg(&n);
    // SAFETY: w and out hold n elements (checked above); the kernel grid-strides below n.
    unsafe { b.launch(LaunchConfig::from(magnitude_geometry(n)?)) }?;
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
    let cfg = LaunchConfig::from(row_tiles_geometry(op, rows, cols)?);
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
    let g = ria_geometry(rows, cols)?;
    let chunks = g.chunks;
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
    unsafe { b.launch(LaunchConfig::from(g.col_partial)) }?;

    let f = dev.function("prune_select", "ria_col_reduce")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(partial.slice()).arg(col_sum.slice_mut()).arg(&chunks_i).arg(&cols_i);
    // SAFETY: partial holds chunks·cols elements, col_sum cols; one thread per column < cols.
    unsafe { b.launch(LaunchConfig::from(g.col_reduce)) }?;

    let f = dev.function("prune_select", &format!("ria_row_sum_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(row_sum.slice_mut()).arg(&rows_i).arg(&cols_i);
    // SAFETY: w holds rows·cols elements, row_sum rows; block r < rows reads row r only.
    unsafe { b.launch(LaunchConfig::from(g.row_sum)) }?;

    let f = dev.function("prune_select", "ria_act")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(scaler_row).arg(act.slice_mut()).arg(&a).arg(&cols_i);
    // SAFETY: scaler_row and act hold cols elements; one thread per column < cols.
    unsafe { b.launch(LaunchConfig::from(g.act)) }?;

    let f = dev.function("prune_select", &format!("ria_scores_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w).arg(col_sum.slice()).arg(row_sum.slice()).arg(act.slice()).arg(out).arg(&rows_i).arg(&cols_i);
    // SAFETY: w and out hold rows·cols elements, col_sum and act cols, row_sum rows; threads
    // with row < rows and column < cols touch one element each.
    unsafe { b.launch(LaunchConfig::from(g.scores)) }?;
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
    let cfg = LaunchConfig::from(per_row_geometry(op, rows)?);
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
    let g = flat_geometry(n)?;
    // state = {prefix of the k-th smallest key, how many keys equal to it are pruned}.
    let mut state = dev.htod(&[0u32, k_u32])?;
    if k > 0 {
        let mut hist = dev.alloc_zeros::<u32>(THREADS as usize)?;
        let (hist_cfg, one_block) = (LaunchConfig::from(g.hist), LaunchConfig::from(g.choose));
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
    let mut counts = dev.alloc::<u32>(g.blocks)?;
    let cfg = LaunchConfig::from(g.chunks);
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
    let cfg = LaunchConfig::from(row_tiles_geometry(op, rows, cols)?);
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
    let cfg = LaunchConfig::from(row_tiles_geometry(op, rows, cols)?);
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
