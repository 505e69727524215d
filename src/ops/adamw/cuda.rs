//! Launches `cuda/adamw.cu`: the AdamW update (one thread per value, grid-stride) and the
//! sum of squares used for gradient clipping (f64 atomics, one per block); and their
//! multi-tensor forms, one launch for a list of tensors described by a table of device
//! addresses (see the file's header), the clip factor computed on the device.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::Hyper;
use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::{DType, Error, Result};

const THREADS: u32 = 256;
/// Threads of the largest `adamw_*` grid; more values take more than one grid-stride step.
pub const MAX_STEP_THREADS: usize = 1 << 24;
/// Threads of the largest `sum_squares_*` grid (each block adds one atomic).
pub const MAX_SUM_THREADS: usize = 1 << 20;

/// Geometry of `adamw_*` and `adamw_f32_inplace` over n values.
pub fn step_geometry(n: usize) -> Result<Launch> {
    Launch::grid_1d(n.min(MAX_STEP_THREADS), THREADS)
}

/// Geometry of `sum_squares_*` over n values.
pub fn sum_squares_geometry(n: usize) -> Result<Launch> {
    Launch::grid_1d(n.clamp(1, MAX_SUM_THREADS), THREADS)
}

/// Updates n values: `param` (T) and `master` (f32; `None` when `param` is f32 and is its
/// own master), `m`, `v` (f32), from `grad` (f32).
#[allow(clippy::too_many_arguments)]
pub fn adamw<T: CudaFloat>(
    dev: &CudaDevice,
    param: &mut CudaSlice<T>,
    master: Option<&mut CudaSlice<f32>>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    grad: &CudaSlice<f32>,
    n: usize,
    h: &Hyper,
) -> Result<()> {
    let (bc1, sqrt_bc2) = h.bias_corrections();
    let f = match master {
        Some(_) => dev.function("adamw", &format!("adamw_{}", T::SUFFIX))?,
        None if T::DTYPE == DType::F32 => dev.function("adamw", "adamw_f32_inplace")?,
        None => return Err(Error::invalid("adamw: a bf16 parameter needs an f32 master copy")),
    };
    let mut l = dev.stream().launch_builder(&f);
    l.arg(param);
    if let Some(mst) = master {
        l.arg(mst);
    }
    l.arg(m).arg(v).arg(grad).arg(&n);
    l.arg(&h.lr).arg(&h.beta1).arg(&h.beta2).arg(&h.eps).arg(&h.weight_decay);
    l.arg(&bc1).arg(&sqrt_bc2).arg(&h.grad_scale);
    // SAFETY: every buffer holds n elements (checked by the caller); the loop stays below n.
    unsafe { l.launch(LaunchConfig::from(step_geometry(n)?)) }?;
    Ok(())
}

/// Σ x² over n elements of `x`, in f64.
pub fn sum_squares<T: CudaFloat>(dev: &CudaDevice, x: &CudaSlice<T>, n: usize) -> Result<f64> {
    let f = dev.function("adamw", &format!("sum_squares_{}", T::SUFFIX))?;
    let mut out = dev.alloc_zeros::<f64>(1)?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(x).arg(&n).arg(out.slice_mut());
    // SAFETY: x holds n elements; out holds one.
    unsafe { l.launch(LaunchConfig::from(sum_squares_geometry(n)?)) }?;
    Ok(dev.dtoh(out.slice())?[0])
}

/// Values per chunk of the multi-tensor kernels (`MULTI_CHUNK` in cuda/adamw.cu).
pub const MULTI_CHUNK: usize = 4096;
/// Blocks of the largest multi-tensor grid; more chunks take more than one block-stride step.
pub const MAX_MULTI_BLOCKS: usize = 1024;

/// One tensor of a multi-tensor launch: the device addresses of its buffers (`master` 0 for
/// an f32 parameter that is its own master) and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The parameter (T).
    pub param: CUdeviceptr,
    /// Its f32 master copy, or 0.
    pub master: CUdeviceptr,
    /// First moment (f32).
    pub m: CUdeviceptr,
    /// Second moment (f32).
    pub v: CUdeviceptr,
    /// Gradient (f32).
    pub grad: CUdeviceptr,
    /// Values.
    pub len: usize,
}

/// The kernels' `table` [rows, 6] (param, master, m, v, grad, length) and `chunk_starts`
/// [rows + 1] (tensor t holds chunks chunk_starts\[t\] .. chunk_starts[t + 1] of
/// [`MULTI_CHUNK`] values).
pub fn multi_tables(rows: &[Row]) -> (Vec<u64>, Vec<u64>) {
    let table = rows.iter().flat_map(|r| [r.param, r.master, r.m, r.v, r.grad, r.len as u64]).collect();
    let mut starts = Vec::with_capacity(rows.len() + 1);
    let mut chunks = 0u64;
    starts.push(0);
    for r in rows {
        chunks += r.len.div_ceil(MULTI_CHUNK) as u64;
        starts.push(chunks);
    }
    (table, starts)
}

/// Geometry of `multi_sum_squares` and `multi_adamw_*` over `chunks` chunks: a block per
/// chunk up to [`MAX_MULTI_BLOCKS`].
pub fn multi_geometry(chunks: u64) -> Result<Launch> {
    let blocks = usize::try_from(chunks).unwrap_or(usize::MAX).clamp(1, MAX_MULTI_BLOCKS);
    Launch::grid_1d(blocks * THREADS as usize, THREADS)
}

/// The multi-tensor tables on the device, ready for the launches below.
pub struct MultiTables {
    table: crate::device::CudaBuffer<u64>,
    starts: crate::device::CudaBuffer<u64>,
    rows: usize,
    chunks: u64,
}

impl MultiTables {
    /// Copies the tables of `rows` to the device (an asynchronous copy: no wait for the GPU).
    pub fn new(dev: &CudaDevice, rows: &[Row]) -> Result<Self> {
        if rows.is_empty() {
            return Err(Error::invalid("adamw: a multi-tensor launch needs at least one tensor"));
        }
        let (table, starts) = multi_tables(rows);
        let chunks = *starts.last().expect("rows + 1 entries");
        Ok(MultiTables { table: dev.htod(&table)?, starts: dev.htod(&starts)?, rows: rows.len(), chunks })
    }
}

/// sumsq\[0\] += Σ over the tables' tensors of Σ grad² (f32 gradients), in one launch.
///
/// # Safety
/// Every address of the tables' grad column is a live f32 device buffer of its row's length,
/// not written while the launch runs.
pub unsafe fn multi_sum_squares(dev: &CudaDevice, t: &MultiTables, sumsq: &mut CudaSlice<f64>) -> Result<()> {
    let f = dev.function("adamw", "multi_sum_squares")?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(t.table.slice()).arg(t.starts.slice()).arg(&t.rows).arg(sumsq);
    // SAFETY: the tables hold rows·6 and rows + 1 entries; the buffers are the caller's.
    unsafe { l.launch(LaunchConfig::from(multi_geometry(t.chunks)?)) }?;
    Ok(())
}

/// One AdamW update of every tensor of the tables, in one launch of `multi_adamw_<T>` (each
/// with its master) or, for f32 parameters that are their own master, `multi_adamw_f32_inplace`;
/// the gradient factor comes from `sumsq` (Σ grad² of the step, [`super::cpu::clip_scale`]),
/// and nothing changes when the norm is not finite. `h.grad_scale` is not used.
///
/// # Safety
/// Every address of the tables is a live device buffer of its row's length and type (param
/// T; master, m, v, grad f32), none shared between rows or columns, none used elsewhere
/// while the launch runs; with `in_place`, T is f32.
pub unsafe fn multi_adamw<T: CudaFloat>(
    dev: &CudaDevice,
    t: &MultiTables,
    in_place: bool,
    sumsq: &CudaSlice<f64>,
    micro: u32,
    max_norm: Option<f32>,
    h: &Hyper,
) -> Result<()> {
    let (bc1, sqrt_bc2) = h.bias_corrections();
    let name = match in_place {
        false => format!("multi_adamw_{}", T::SUFFIX),
        true if T::DTYPE == DType::F32 => "multi_adamw_f32_inplace".to_string(),
        true => return Err(Error::invalid("adamw: a bf16 parameter needs an f32 master copy")),
    };
    let f = dev.function("adamw", &name)?;
    let (micro, max_norm) = (micro as f32, max_norm.unwrap_or(0.0));
    let mut l = dev.stream().launch_builder(&f);
    l.arg(t.table.slice()).arg(t.starts.slice()).arg(&t.rows).arg(sumsq).arg(&micro).arg(&max_norm);
    l.arg(&h.lr).arg(&h.beta1).arg(&h.beta2).arg(&h.eps).arg(&h.weight_decay).arg(&bc1).arg(&sqrt_bc2);
    // SAFETY: the tables hold rows·6 and rows + 1 entries; the buffers are the caller's.
    unsafe { l.launch(LaunchConfig::from(multi_geometry(t.chunks)?)) }?;
    Ok(())
}
