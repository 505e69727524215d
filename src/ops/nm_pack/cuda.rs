//! Launches `cuda/nm_pack.cu`: N:M compression (values, then packed indices) and
//! decompression. Shapes are checked by `ops::nm_pack`, buffer lengths here.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::expect_len;
use crate::ops::to_i32;
use crate::sparse::nm::index_bits;
use crate::sparse::{check_nm, NmMatrix};
use crate::{Error, Result};

const THREADS: u32 = 256;

/// Geometry of both compression kernels: grid (rows, tiles of 256 threads over `per_row`
/// items: the values of a row for `nm_compress_values_*`, its index bytes for
/// `nm_compress_indices`); `op` names the caller in errors.
pub fn row_tiles_geometry(op: &'static str, rows: usize, per_row: usize) -> Result<Launch> {
    let rows = to_i32(op, rows)? as u32;
    let tiles = u16::try_from(per_row.div_ceil(THREADS as usize))
        .map_err(|_| Error::invalid(format!("{op}: {per_row} items per row exceed one CUDA grid")))?;
    Ok(Launch { grid: (rows, u32::from(tiles), 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// The sizes every kernel takes, as i32, and the per-row lengths of the four buffers.
struct Dims {
    rows: i32,
    cols: i32,
    n: i32,
    m: i32,
    bits: i32,
    index_stride: i32,
    /// Elements per row of dense, mask bytes, values and index bytes.
    per_row: [usize; 4],
}

/// Checks the N:M pattern of a [rows, cols] matrix and converts its sizes.
fn dims(op: &'static str, rows: usize, cols: usize, n: usize, m: usize) -> Result<Dims> {
    check_nm(n, m, cols)?;
    let index_stride = NmMatrix::<u8>::index_stride(cols, n, m);
    // The kernels address index bits of a row as s·bits + b in i32.
    to_i32(op, index_stride * 8)?;
    Ok(Dims {
        rows: to_i32(op, rows)?,
        cols: to_i32(op, cols)?,
        n: to_i32(op, n)?,
        m: to_i32(op, m)?,
        bits: to_i32(op, index_bits(m))?,
        index_stride: to_i32(op, index_stride)?,
        per_row: [cols, cols.div_ceil(8), cols / m * n, index_stride],
    })
}

/// Error unless each buffer holds `rows` rows of its kind (dense, mask, values, indices;
/// `None` for one a kernel does not take).
fn expect_rows(op: &'static str, d: &Dims, rows: usize, lens: [Option<usize>; 4]) -> Result<()> {
    const NAMES: [&str; 4] = ["dense", "mask", "values", "indices"];
    for ((have, per_row), what) in lens.into_iter().zip(d.per_row).zip(NAMES) {
        if let Some(have) = have {
            expect_len(op, what, have, rows.saturating_mul(per_row))?;
        }
    }
    Ok(())
}

/// Compresses dense [rows, cols] under mask [rows, ceil(cols/8)] into values
/// [rows, cols/m·n] and indices [rows, ceil(cols/m·n·bits / 8)]. Returns the first group
/// (row, group) that does not keep exactly n (then values and indices are meaningless).
#[allow(clippy::too_many_arguments)]
pub fn compress<T: CudaFloat>(
    dev: &CudaDevice,
    dense: &CudaSlice<T>,
    mask: &CudaSlice<u8>,
    values: &mut CudaSlice<T>,
    indices: &mut CudaSlice<u8>,
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
) -> Result<Option<(usize, usize)>> {
    let op = "nm_pack compress";
    let d = dims(op, rows, cols, n, m)?;
    expect_rows(op, &d, rows, [Some(dense.len()), Some(mask.len()), Some(values.len()), Some(indices.len())])?;
    let [_, mask_stride, per_row, index_stride] = d.per_row;
    let mask_stride_i = to_i32(op, mask_stride)?;
    let groups = cols / m;
    let mut bad_group = dev.htod(&[u64::MAX])?;

    let f = dev.function("nm_pack", &format!("nm_compress_values_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(dense).arg(mask).arg(values).arg(bad_group.slice_mut());
    b.arg(&d.rows).arg(&d.cols).arg(&mask_stride_i).arg(&d.n).arg(&d.m);
    // SAFETY: dense holds rows·cols elements, mask rows·mask_stride bytes, values rows·per_row
    // (checked above); thread (row < rows, slot < per_row) reads mask bits and one dense
    // element of its group (m divides cols) and writes one value; bad_group holds one u64.
    unsafe { b.launch(LaunchConfig::from(row_tiles_geometry(op, rows, per_row)?)) }?;

    let f = dev.function("nm_pack", "nm_compress_indices")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(mask).arg(indices).arg(&d.rows).arg(&d.cols).arg(&mask_stride_i).arg(&d.index_stride);
    b.arg(&d.n).arg(&d.m).arg(&d.bits);
    // SAFETY: mask holds rows·mask_stride bytes and indices rows·index_stride (checked above),
    // index_stride = ceil(per_row·bits / 8); thread (row < rows, byte < index_stride) writes
    // that byte only and reads mask bits of slots below per_row.
    unsafe { b.launch(LaunchConfig::from(row_tiles_geometry(op, rows, index_stride)?)) }?;

    let bad = dev.dtoh(bad_group.slice())?;
    Ok(match bad.first() {
        Some(&flat) if flat != u64::MAX => {
            let flat = flat as usize;
            Some((flat / groups, flat % groups))
        }
        _ => None,
    })
}

/// Expands values [rows, cols/m·n] and indices [rows, ceil(cols/m·n·bits / 8)] into dense
/// [rows, cols] (the `sparse` module's N:M expand kernel).
#[allow(clippy::too_many_arguments)]
pub fn decompress<T: CudaFloat>(
    dev: &CudaDevice,
    values: &CudaSlice<T>,
    indices: &CudaSlice<u8>,
    dense: &mut CudaSlice<T>,
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
) -> Result<()> {
    let op = "nm_pack decompress";
    let d = dims(op, rows, cols, n, m)?;
    expect_rows(op, &d, rows, [Some(dense.len()), None, Some(values.len()), Some(indices.len())])?;
    let format = crate::sparse::SparseFormat::NM { n, m };
    crate::sparse::cuda::expand(
        dev,
        rows,
        cols,
        format,
        values,
        indices,
        None,
        &mut dense.slice_mut(..),
        crate::sparse::Expand::Overwrite,
    )
}
