//! Launches `cuda/sparse.cu`: expanding a compressed weight into a device buffer, the
//! inverse gather of the kept positions of a dense buffer into the values, and masking a
//! window of columns of a dense buffer.

use cudarc::driver::{CudaSlice, CudaViewMut, LaunchConfig, PushKernelArg};

use super::cpu::meta_stride;
use super::nm::index_bits;
use super::weight::{Expand, SparseFormat};
use crate::device::cuda::{to_i32, CudaFloat};
use crate::device::{CudaDevice, Launch};
use crate::{Error, Result};

const THREADS: u32 = 256;
/// Largest mask row in bytes the bitmask kernel holds in shared memory (65,536 columns).
pub const MAX_STRIDE: usize = 8192;

/// `bitmask_expand_*`: one block of \[`THREADS`\] per row (its shared prefix counts are
/// static, so no dynamic shared memory).
pub fn bitmask_geometry(op: &'static str, rows: usize) -> Result<Launch> {
    Ok(Launch { grid: (to_i32(op, rows)? as u32, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// `nm_expand_*`: blocks (rows, ⌈cols / \[`THREADS`\]⌉), one thread per output element.
pub fn nm_geometry(op: &'static str, rows: usize, cols: usize) -> Result<Launch> {
    let tiles = to_i32(op, cols.div_ceil(THREADS as usize))? as u32;
    Ok(Launch { grid: (to_i32(op, rows)? as u32, tiles, 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// `mask_window_*`: one thread per 8 columns of the window.
pub fn mask_window_geometry(op: &'static str, rows: usize, width: usize) -> Result<Launch> {
    let threads = rows.checked_mul(width.div_ceil(8)).ok_or_else(|| Error::invalid(format!("{op}: size overflows")))?;
    Launch::grid_1d(threads, THREADS)
}

/// `nonzero_mask_*`: one thread per mask byte.
pub fn nonzero_mask_geometry(rows: usize, cols: usize) -> Result<Launch> {
    Launch::grid_1d(rows * cols.div_ceil(8), THREADS)
}

/// The bitmask [rows, ⌈cols/8⌉] of the non-zero entries of `dense` (≥ rows·cols elements).
pub fn nonzero_mask<T: CudaFloat>(dev: &CudaDevice, dense: &CudaSlice<T>, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let op = "sparse nonzero mask";
    let stride = cols.div_ceil(8);
    if dense.len() < rows * cols {
        return Err(Error::invalid(format!("{op}: buffer of {} for {rows}x{cols}", dense.len())));
    }
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    let mut mask = dev.alloc::<u8>(rows * stride)?;
    let (rows_i, cols_i, stride_i) = (to_i32(op, rows)?, to_i32(op, cols)?, to_i32(op, stride)?);
    let f = dev.function("sparse", &format!("nonzero_mask_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(dense).arg(mask.slice_mut()).arg(&rows_i).arg(&cols_i).arg(&stride_i);
    // SAFETY: dense holds ≥ rows·cols elements, mask rows·stride bytes; thread i < rows·stride
    // writes mask[i] and reads row i / stride's columns below cols.
    unsafe { b.launch(LaunchConfig::from(nonzero_mask_geometry(rows, cols)?)) }?;
    dev.dtoh(mask.slice())
}

/// Expands into `out` (≥ rows·cols elements). Sizes are checked here.
#[allow(clippy::too_many_arguments)]
pub fn expand<T: CudaFloat>(
    dev: &CudaDevice,
    rows: usize,
    cols: usize,
    format: SparseFormat,
    values: &CudaSlice<T>,
    meta: &CudaSlice<u8>,
    offsets: Option<&CudaSlice<u32>>,
    out: &mut CudaViewMut<'_, T>,
    mode: Expand,
) -> Result<()> {
    let mode_i: i32 = match mode {
        Expand::Overwrite => 0,
        Expand::AddKept => 1,
        Expand::MaskOnly => return mask_window(dev, rows, cols, format, meta, out, 0, cols),
    };
    launch(dev, rows, cols, format, values, meta, offsets, out, mode_i)
}

/// Zeroes the pruned entries of `out` [rows, width] (row stride `width`), which holds columns
/// `col0 .. col0 + width` of a [rows, cols] matrix of this pattern (`meta`: the bitmask or
/// the N:M positions); the kept entries stay. `col0` must be a multiple of 8.
#[allow(clippy::too_many_arguments)]
pub fn mask_window<T: CudaFloat>(
    dev: &CudaDevice,
    rows: usize,
    cols: usize,
    format: SparseFormat,
    meta: &CudaSlice<u8>,
    out: &mut CudaViewMut<'_, T>,
    col0: usize,
    width: usize,
) -> Result<()> {
    const OP: &str = "sparse mask window";
    let stride = meta_stride(cols, format);
    let end = col0.checked_add(width);
    if !col0.is_multiple_of(8) || end.is_none_or(|e| e > cols) || meta.len() < rows * stride || out.len() < rows * width
    {
        return Err(Error::invalid(format!(
            "{OP}: columns {col0}..+{width} of {rows}x{cols} ({} meta bytes, buffer of {}); the window must start at \
             a multiple of 8 and lie inside the matrix",
            meta.len(),
            out.len()
        )));
    }
    if rows == 0 || width == 0 {
        return Ok(());
    }
    let (n, m, bits) = match format {
        SparseFormat::Bitmask => (0, 0, 0),
        SparseFormat::NM { n, m } => (n, m, index_bits(m)),
    };
    let mut ints = [0i32; 7];
    for (slot, v) in ints.iter_mut().zip([rows, stride, col0, width, n, m, bits]) {
        *slot = to_i32(OP, v)?;
    }
    let f = dev.function("sparse", &format!("mask_window_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(meta).arg(out);
    for v in &ints {
        b.arg(v);
    }
    // SAFETY: meta holds rows·stride bytes, out ≥ rows·width elements (checked above); the
    // thread of (row, 8 columns from col0 + 8j) reads the row's meta bytes of those columns
    // (inside the row: col0 + width ≤ cols) and writes out[row·width + 8j ..] below width.
    unsafe { b.launch(LaunchConfig::from(mask_window_geometry(OP, rows, width)?)) }?;
    Ok(())
}

/// values ← the kept positions of `dense` (≥ rows·cols elements, not modified).
#[allow(clippy::too_many_arguments)]
pub fn gather<T: CudaFloat>(
    dev: &CudaDevice,
    rows: usize,
    cols: usize,
    format: SparseFormat,
    values: &mut CudaSlice<T>,
    meta: &CudaSlice<u8>,
    offsets: Option<&CudaSlice<u32>>,
    dense: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    // Mode 3 writes through the values pointer; the `&mut` above makes that access exclusive.
    launch(dev, rows, cols, format, values, meta, offsets, dense, 3)
}

#[allow(clippy::too_many_arguments)]
fn launch<T: CudaFloat>(
    dev: &CudaDevice,
    rows: usize,
    cols: usize,
    format: SparseFormat,
    values: &CudaSlice<T>,
    meta: &CudaSlice<u8>,
    offsets: Option<&CudaSlice<u32>>,
    out: &mut CudaViewMut<'_, T>,
    mode_i: i32,
) -> Result<()> {
    let op = "sparse expand";
    let need = rows * cols;
    if out.len() < need {
        return Err(Error::invalid(format!("{op}: buffer of {} for {rows}x{cols}", out.len())));
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (rows_i, cols_i) = (to_i32(op, rows)?, to_i32(op, cols)?);
    match format {
        SparseFormat::Bitmask => {
            let stride = meta_stride(cols, format);
            let offsets = offsets.ok_or_else(|| Error::invalid("bitmask weight without row offsets"))?;
            if stride > MAX_STRIDE || meta.len() < rows * stride || offsets.len() < rows + 1 {
                return Err(Error::invalid(format!(
                    "{op}: mask {} bytes, offsets {} for {rows}x{cols}",
                    meta.len(),
                    offsets.len()
                )));
            }
            let f = dev.function("sparse", &format!("bitmask_expand_{}", T::SUFFIX))?;
            let stride_i = to_i32(op, stride)?;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(values).arg(meta).arg(offsets).arg(out).arg(&rows_i).arg(&cols_i).arg(&stride_i).arg(&mode_i);
            let cfg = LaunchConfig::from(bitmask_geometry(op, rows)?);
            // SAFETY: mask holds rows·stride bytes, offsets rows + 1 entries, out ≥ rows·cols;
            // offsets are private to SparseWeight, built non-decreasing with the last equal to
            // values.len(), and each row's kept-bit count equals its offset difference;
            // block `row` reads its mask row and values [offsets[row], offsets[row + 1]).
            unsafe { b.launch(cfg) }?;
        }
        SparseFormat::NM { n, m } => {
            let (bits, per_row) = (index_bits(m), cols / m * n);
            let index_stride = meta_stride(cols, format);
            if values.len() < rows * per_row || meta.len() < rows * index_stride {
                return Err(Error::invalid(format!(
                    "{op}: {} values, {} index bytes for {rows}x{cols} {n}:{m}",
                    values.len(),
                    meta.len()
                )));
            }
            let f = dev.function("sparse", &format!("nm_expand_{}", T::SUFFIX))?;
            let (is_i, n_i, m_i, bits_i) =
                (to_i32(op, index_stride)?, to_i32(op, n)?, to_i32(op, m)?, to_i32(op, bits)?);
            let mut b = dev.stream().launch_builder(&f);
            b.arg(values)
                .arg(meta)
                .arg(out)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&is_i)
                .arg(&n_i)
                .arg(&m_i)
                .arg(&bits_i)
                .arg(&mode_i);
            let cfg = LaunchConfig::from(nm_geometry(op, rows, cols)?);
            // SAFETY: values hold rows·cols/m·n, positions rows·index_stride bytes, out ≥ rows·cols;
            // thread (row, c < cols) reads its group's n slots and writes out[row·cols + c].
            unsafe { b.launch(cfg) }?;
        }
    }
    Ok(())
}
