//! Launches `cuda/rms_norm.cu`: one 256-thread block per row for y and dx; dw as
//! per-chunk column partials (deterministic) summed by a second kernel.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::{grid_1d, CudaFloat};
use crate::device::CudaDevice;
use crate::ops::to_i32;
use crate::Result;

const THREADS: u32 = 256;

fn row_grid(rows: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (u32::try_from(rows.max(1)).map_err(|_| crate::Error::invalid("rms_norm: too many rows"))?, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// y = rms_norm(x) · w. Slices: x, y [rows·dim], w [dim] (checked by the caller).
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    let f = dev.function("rms_norm", &format!("rms_norm_fwd_{}", T::SUFFIX))?;
    let (rows_i, dim_i) = (to_i32("rms_norm", rows)?, to_i32("rms_norm", dim)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(w).arg(y).arg(&rows_i).arg(&dim_i).arg(&eps);
    // SAFETY: x, y hold rows·dim and w holds dim elements (checked in ops::rms_norm);
    // each block touches only its row.
    unsafe { b.launch(row_grid(rows)?) }?;
    Ok(())
}

/// dx (if `dx` is given) and dw (if `dw` is given). Slices as in [`forward`].
#[allow(clippy::too_many_arguments)]
pub fn backward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
    dy: &CudaSlice<T>,
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
    match dx {
        Some(dx) => b.arg(dx),
        // A null pointer: the kernel then only writes rstd.
        None => b.arg(&null),
    };
    b.arg(rstd.slice_mut()).arg(&rows_i).arg(&dim_i).arg(&eps);
    // SAFETY: x, dy, dx hold rows·dim, w dim, rstd rows elements; one block per row.
    unsafe { b.launch(row_grid(rows)?) }?;

    if let Some(dw) = dw {
        let rows_per_chunk = 64usize;
        let chunks = rows.div_ceil(rows_per_chunk).max(1);
        let mut partial = dev.alloc::<f32>(chunks * dim)?;
        let f = dev.function("rms_norm", &format!("rms_norm_bwd_dw_partial_{}", T::SUFFIX))?;
        let (rpc_i, chunks_i) = (to_i32("rms_norm", rows_per_chunk)?, to_i32("rms_norm", chunks)?);
        let mut cfg = grid_1d(dim, THREADS)?;
        cfg.grid_dim.1 = chunks_i as u32;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(x).arg(dy).arg(rstd.slice()).arg(partial.slice_mut()).arg(&rows_i).arg(&dim_i).arg(&rpc_i);
        // SAFETY: partial holds chunks·dim; each thread writes one (chunk, column) and reads
        // rows of its chunk below `rows`.
        unsafe { b.launch(cfg) }?;
        let f = dev.function("rms_norm", &format!("rms_norm_bwd_dw_reduce_{}", T::SUFFIX))?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(partial.slice()).arg(dw).arg(&chunks_i).arg(&dim_i);
        // SAFETY: dw holds dim elements, partial chunks·dim.
        unsafe { b.launch(grid_1d(dim, THREADS)?) }?;
    }
    Ok(())
}
