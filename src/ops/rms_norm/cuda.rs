//! Launches `cuda/rms_norm.cu`: one 256-thread block per row for y (and the residual sum
//! when fused) and dx (plus the gradient x already holds when fused); dw as per-chunk column
//! partials (deterministic) summed by a second kernel.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::to_i32;
use crate::Result;

const THREADS: u32 = 256;
/// Rows summed by one thread of the dw partial kernel.
const DW_ROWS_PER_CHUNK: usize = 64;

/// Geometry of `rms_norm_fwd_*` and `rms_norm_bwd_dx_*`: one block per row.
pub fn row_geometry(rows: usize) -> Result<Launch> {
    let blocks = u32::try_from(rows.max(1)).map_err(|_| crate::Error::invalid("rms_norm: too many rows"))?;
    Ok(Launch { grid: (blocks, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// The two launches that give dw: `partial` sums `rows_per_chunk` rows per chunk and column
/// into a [chunks, dim] f32 buffer, `reduce` sums the chunks per column.
#[derive(Clone, Copy, Debug)]
pub struct DwGeometry {
    /// Rows per chunk (the kernel's `rows_per_chunk` argument).
    pub rows_per_chunk: usize,
    /// Number of chunks (at least one).
    pub chunks: usize,
    /// `rms_norm_bwd_dw_partial_*`: grid (⌈dim / 256⌉, chunks).
    pub partial: Launch,
    /// `rms_norm_bwd_dw_reduce_*`: ⌈dim / 256⌉ blocks.
    pub reduce: Launch,
}

/// Geometry of the dw kernels for [rows, dim].
pub fn dw_geometry(rows: usize, dim: usize) -> Result<DwGeometry> {
    let chunks = rows.div_ceil(DW_ROWS_PER_CHUNK).max(1);
    let reduce = Launch::grid_1d(dim, THREADS)?;
    let mut partial = reduce;
    partial.grid.1 = u32::try_from(chunks).map_err(|_| crate::Error::invalid("rms_norm: too many rows"))?;
    Ok(DwGeometry { rows_per_chunk: DW_ROWS_PER_CHUNK, chunks, partial, reduce })
}

/// y = rms_norm(x) · w, or with `residual` = (res, sum): sum = x + res (rounded to T) and
/// y = rms_norm(sum) · w in the same pass. Slices: x, res, sum, y [rows·dim], w \[dim\]
/// (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    residual: Option<(&CudaSlice<T>, &mut CudaSlice<T>)>,
    w: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    let f = dev.function("rms_norm", &format!("rms_norm_fwd_{}", T::SUFFIX))?;
    let (rows_i, dim_i) = (to_i32("rms_norm", rows)?, to_i32("rms_norm", dim)?);
    let null: u64 = 0;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x);
    match residual {
        Some((res, sum)) => b.arg(res).arg(w).arg(sum),
        // Null res and sum: the plain norm of x.
        None => b.arg(&null).arg(w).arg(&null),
    };
    b.arg(y).arg(&rows_i).arg(&dim_i).arg(&eps);
    // SAFETY: x, res, sum and y hold rows·dim and w holds dim elements (checked in
    // ops::rms_norm); each block touches only its row.
    unsafe { b.launch(LaunchConfig::from(row_geometry(rows)?)) }?;
    Ok(())
}

/// dx (if `dx` is given; plus `pending`, the gradient x already has, when given) and dw (if
/// `dw` is given). Slices as in [`forward`].
#[allow(clippy::too_many_arguments)]
pub fn backward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    pending: Option<&CudaSlice<T>>,
    dx: Option<&mut CudaSlice<T>>,
    dw: Option<&mut CudaSlice<T>>,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    let (rows_i, dim_i) = (to_i32("rms_norm", rows)?, to_i32("rms_norm", dim)?);
    let mut rstd = dev.alloc::<f32>(rows)?;
    let f = dev.function("rms_norm", &format!("rms_norm_bwd_dx_{}", T::SUFFIX))?;
    let null: u64 = 0;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(w).arg(dy);
    match pending {
        Some(p) => b.arg(p),
        None => b.arg(&null),
    };
    match dx {
        Some(dx) => b.arg(dx),
        // A null pointer: the kernel then only writes rstd.
        None => b.arg(&null),
    };
    b.arg(rstd.slice_mut()).arg(&rows_i).arg(&dim_i).arg(&eps);
    // SAFETY: x, dy, pending, dx hold rows·dim, w dim, rstd rows elements; one block per row.
    unsafe { b.launch(LaunchConfig::from(row_geometry(rows)?)) }?;

    if let Some(dw) = dw {
        let g = dw_geometry(rows, dim)?;
        let mut partial = dev.alloc::<f32>(g.chunks * dim)?;
        let f = dev.function("rms_norm", &format!("rms_norm_bwd_dw_partial_{}", T::SUFFIX))?;
        let (rpc_i, chunks_i) = (to_i32("rms_norm", g.rows_per_chunk)?, to_i32("rms_norm", g.chunks)?);
        let mut b = dev.stream().launch_builder(&f);
        b.arg(x).arg(dy).arg(rstd.slice()).arg(partial.slice_mut()).arg(&rows_i).arg(&dim_i).arg(&rpc_i);
        // SAFETY: partial holds chunks·dim; each thread writes one (chunk, column) and reads
        // rows of its chunk below `rows`.
        unsafe { b.launch(LaunchConfig::from(g.partial)) }?;
        let f = dev.function("rms_norm", &format!("rms_norm_bwd_dw_reduce_{}", T::SUFFIX))?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(partial.slice()).arg(dw).arg(&chunks_i).arg(&dim_i);
        // SAFETY: dw holds dim elements, partial chunks·dim.
        unsafe { b.launch(LaunchConfig::from(g.reduce)) }?;
    }
    Ok(())
}
