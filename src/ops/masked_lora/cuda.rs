//! Masked LoRA on CUDA: cuBLAS GEMMs around the workspace. The workspace's W_eff comes from
//! `cuda/masked_lora.cu` in one pass for a bitmask or 2:4 base, or from a GEMM s·B·A and
//! `cuda/sparse.cu`'s expansion for other N:M patterns. Shapes as in [`super::cpu`]; all
//! slices are checked by `ops::masked_lora`.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::cpu::Dims;
use crate::device::cuda::{to_i32, CudaFloat};
use crate::device::{CudaDevice, Launch};
use crate::ops::matmul::cuda::matmul;
use crate::ops::matmul::Dims as Mm;
use crate::sparse::{Expand, SparseFormat, SparseWeight};
use crate::{Error, Result};

/// Threads of a `masked_lora_weff_bitmask_*` block (`WEFF_THREADS` in the kernel).
pub const WEFF_THREADS: u32 = 256;
/// Rows of W_eff per block (`WEFF_ROWS` in the kernel).
pub const WEFF_ROWS: usize = 4;
/// The most dynamic shared memory a launch asks for without opting in.
const DEFAULT_SHARED: usize = 48 << 10;

/// `masked_lora_weff_bitmask_*` and `masked_lora_weff_two_four_*` for `rows` rows of W_eff at
/// LoRA rank `rank`: a block per [`WEFF_ROWS`] rows, s·B of its rows in dynamic shared memory.
pub fn weff_geometry(rows: usize, rank: usize) -> Result<Launch> {
    const OP: &str = "masked_lora W_eff";
    let shared = WEFF_ROWS * rank * std::mem::size_of::<f32>();
    if shared > DEFAULT_SHARED {
        return Err(Error::invalid(format!("{OP}: rank {rank} needs {shared} bytes of shared memory")));
    }
    let blocks = to_i32(OP, rows.div_ceil(WEFF_ROWS).max(1))? as u32;
    Ok(Launch { grid: (blocks, 1, 1), block: (WEFF_THREADS, 1, 1), shared_bytes: shared as u32 })
}

/// ws ← W⊙M + s·M⊙(B·A) (ws holds ≥ out·in elements).
pub fn build_effective<T: CudaFloat>(
    dev: &CudaDevice,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    s: f32,
    ws: &mut CudaSlice<T>,
    d: Dims,
) -> Result<()> {
    const OP: &str = "masked_lora W_eff";
    let (rows, cols, rank) = (d.output, d.input, d.rank);
    let two_four = w.format() == SparseFormat::NM { n: 2, m: 4 };
    if w.format() != SparseFormat::Bitmask && !two_four {
        matmul(dev, b, a, ws, Mm::single(rows, cols, rank, false, false), s, 0.0)?;
        return w.expand_into_cuda(&mut ws.slice_mut(..), Expand::AddKept);
    }
    let stride = cols.div_ceil(8);
    let (values, meta) = (w.values().read()?, w.meta().read()?);
    let (values, meta) = (values.cuda::<T>()?, meta.cuda::<u8>()?);
    let need_values = if two_four { rows * (cols / 2) } else { 0 };
    if (w.rows(), w.cols()) != (rows, cols)
        || meta.len() < rows * stride
        || values.len() < need_values
        || a.len() < rank * cols
        || b.len() < rows * rank
        || ws.len() < rows * cols
    {
        return Err(Error::invalid(format!(
            "{OP}: a {}x{} {:?} weight ({} values, {} mask or position bytes), A {}, B {}, workspace {} for \
             {rows}x{cols} rank {rank}",
            w.rows(),
            w.cols(),
            w.format(),
            values.len(),
            meta.len(),
            a.len(),
            b.len(),
            ws.len()
        )));
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let [rows_i, cols_i, stride_i, rank_i] = [rows, cols, stride, rank].map(|v| to_i32(OP, v));
    let (rows_i, cols_i, stride_i, rank_i) = (rows_i?, cols_i?, stride_i?, rank_i?);
    let geometry = LaunchConfig::from(weff_geometry(rows, rank)?);
    if two_four {
        let f = dev.function("masked_lora", &format!("masked_lora_weff_two_four_{}", T::SUFFIX))?;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(values).arg(meta).arg(a).arg(b).arg(&s).arg(ws);
        l.arg(&rows_i).arg(&cols_i).arg(&stride_i).arg(&rank_i);
        // SAFETY: values hold rows·cols/2, positions rows·stride bytes, A rank·cols, B
        // rows·rank, ws ≥ rows·cols (checked above); block b writes rows 4b..4b+3 < rows of ws,
        // a thread reads the 4 (or, at a last lone group, 2) values of its positions byte.
        unsafe { l.launch(geometry) }?;
        return Ok(());
    }
    let offsets = w.row_offsets().ok_or_else(|| Error::invalid("bitmask weight without row offsets"))?.read()?;
    let offsets = offsets.cuda::<u32>()?;
    if offsets.len() < rows + 1 {
        return Err(Error::invalid(format!("{OP}: {} row offsets for {rows} rows", offsets.len())));
    }
    let f = dev.function("masked_lora", &format!("masked_lora_weff_bitmask_{}", T::SUFFIX))?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(values).arg(meta).arg(offsets).arg(a).arg(b).arg(&s).arg(ws);
    l.arg(&rows_i).arg(&cols_i).arg(&stride_i).arg(&rank_i);
    // SAFETY: mask holds rows·stride bytes, offsets rows + 1 entries, A rank·cols, B rows·rank,
    // ws ≥ rows·cols (checked above); block b writes rows 4b..4b+3 < rows of ws and reads the
    // values of a row only below its next offset (the kernel checks each slot against it);
    // the values are SparseWeight's own, offsets[rows] = values.len().
    unsafe { l.launch(geometry) }?;
    Ok(())
}

/// y = x·W_effᵀ.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    s: f32,
    y: &mut CudaSlice<T>,
    d: Dims,
) -> Result<()> {
    dev.with_workspace::<T, _>(d.output * d.input, |ws| {
        build_effective(dev, w, a, b, s, ws, d)?;
        matmul(dev, x, ws, y, Mm::single(d.tokens, d.output, d.input, false, true), 1.0, 0.0)
    })
}

/// dx = dy·W_eff (when `dx` is given) and the exact adapter gradients (when given):
/// G = dyᵀ·x in the workspace, masked in place, dB = s·(M⊙G)·Aᵀ, dA = s·Bᵀ·(M⊙G).
#[allow(clippy::too_many_arguments)]
pub fn backward_exact<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    s: f32,
    dx: Option<&mut CudaSlice<T>>,
    adapters: Option<(&mut CudaSlice<T>, &mut CudaSlice<T>)>,
    d: Dims,
) -> Result<()> {
    dev.with_workspace::<T, _>(d.output * d.input, |ws| {
        if let Some(dx) = dx {
            build_effective(dev, w, a, b, s, ws, d)?;
            matmul(dev, dy, ws, dx, Mm::single(d.tokens, d.input, d.output, false, false), 1.0, 0.0)?;
        }
        if let Some((da, db)) = adapters {
            matmul(dev, dy, x, ws, Mm::single(d.output, d.input, d.tokens, true, false), 1.0, 0.0)?;
            w.expand_into_cuda(&mut ws.slice_mut(..), Expand::MaskOnly)?;
            matmul(dev, ws, a, db, Mm::single(d.output, d.rank, d.input, false, true), s, 0.0)?;
            matmul(dev, b, ws, da, Mm::single(d.rank, d.input, d.output, true, false), s, 0.0)?;
        }
        Ok(())
    })
}
