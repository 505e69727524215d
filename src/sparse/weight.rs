//! `SparseWeight`: the frozen base of a pruned linear, stored compressed from the moment it
//! is pruned. W: [rows = out, cols = in], values in F32 or BF16, on the CPU or a GPU.
//!
//! - `Bitmask`: `values` [nnz] are the kept entries row by row; `meta` is the 1-bit mask
//!   [rows, ceil(cols/8)] (bit j%8 of byte j/8, 1 = kept); `row_offsets` [rows + 1] (u32)
//!   index the first value of each row. At 50% a bf16 base costs 1 + 1/8 bytes per weight
//!   (plus 4 bytes per row).
//! - `NM { n, m }`: `values` [rows, cols/m·n]; `meta` the packed in-group positions
//!   (ceil(log2 m) bits each, see [`crate::sparse::NmMatrix`]).
//!
//! [`SparseWeight::expand_into`] writes the dense matrix into a caller-owned buffer of at
//! least rows·cols elements (the fine-tuning workspace): `Overwrite` gives W⊙M;
//! `AddKept` gives `M ? out + W : 0`, i.e. W⊙M + M⊙out, which turns a product s·B·A already
//! in the buffer into the masked-LoRA weight W⊙M + s·M⊙(B·A) in one pass; `MaskOnly` gives
//! M⊙out (a masked gradient). It is bit-exact against the dense masked matrix on both devices.

use cudarc::driver::{CudaSlice, CudaViewMut};

use super::nm::positions;
use super::{check_nm, BitMask, NmMatrix};
use crate::device::cuda::CudaFloat;
use crate::storage::{Element, FloatElement};
use crate::{with_compute_type, DType, Device, Error, Result, Tensor};

/// How the kept entries are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseFormat {
    /// Any pattern: packed values + 1-bit mask + row offsets.
    Bitmask,
    /// N kept in every M consecutive inputs: values + packed in-group positions.
    NM {
        /// Kept per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

/// What \[`SparseWeight::expand_into`\] does with the buffer's previous contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expand {
    /// out = W⊙M.
    Overwrite,
    /// out = M ? out + W : 0.
    AddKept,
    /// out = M ? out : 0 (masks what the buffer holds; the values are not read).
    MaskOnly,
}

/// A pruned weight matrix stored compressed.
#[derive(Clone, Debug)]
pub struct SparseWeight {
    rows: usize,
    cols: usize,
    format: SparseFormat,
    values: Tensor,
    meta: Tensor,
    row_offsets: Option<Tensor>,
}

impl SparseWeight {
    /// Compresses the entries of `w` ([rows, cols], F32 or BF16, any device) that `mask`
    /// keeps. For N:M the mask must keep exactly N per group.
    pub fn compress(w: &Tensor, mask: &BitMask, format: SparseFormat) -> Result<Self> {
        let [rows, cols] = w.shape().dims_n::<2>("sparse weight")?;
        if (mask.rows(), mask.cols()) != (rows, cols) {
            return Err(Error::invalid(format!("mask {}x{} for weight {}", mask.rows(), mask.cols(), w.shape())));
        }
        match w.device() {
            Device::Cuda(dev) => {
                with_compute_type!(w.dtype(), "sparse weight", T => Self::compress_cuda::<T>(dev, w, mask, format))
            }
            Device::Cpu(_) => {
                with_compute_type!(w.dtype(), "sparse weight", T => Self::compress_typed::<T>(w, mask, format))
            }
        }
    }

    /// [`Self::compress`] of a CUDA weight on the device: only the metadata made from the
    /// mask goes up (the bitmask and its row offsets, or the N:M positions, [`positions`]);
    /// the kept values are gathered by `cuda/sparse.cu`, so no weight value crosses to the
    /// host.
    fn compress_cuda<T: CudaFloat>(
        dev: &crate::device::CudaDevice,
        w: &Tensor,
        mask: &BitMask,
        format: SparseFormat,
    ) -> Result<Self> {
        let (rows, cols) = (mask.rows(), mask.cols());
        let device = w.device();
        let (meta, offsets, total, values_shape) = match format {
            SparseFormat::Bitmask => {
                let meta = Tensor::from_vec(mask.bytes().to_vec(), [rows, BitMask::stride_for(cols)], device)?;
                let mut offsets = Vec::with_capacity(rows + 1);
                let mut total = 0usize;
                for r in 0..rows {
                    offsets.push(total as u32);
                    total += mask.kept_in_row(r);
                    if total > u32::MAX as usize {
                        return Err(Error::invalid("sparse weight has more than 2³² kept values"));
                    }
                }
                offsets.push(total as u32);
                (meta, Some(Tensor::from_vec(offsets, [rows + 1], device)?), total, vec![total])
            }
            SparseFormat::NM { n, m } => {
                let stride = NmMatrix::<u8>::index_stride(cols, n, m);
                let meta = Tensor::from_vec(positions(mask, n, m)?, [rows, stride], device)?;
                let per_row = cols / m * n;
                (meta, None, rows * per_row, vec![rows, per_row])
            }
        };
        let mut values = dev.alloc::<T>(total)?;
        {
            // The gather reads the weight through a mutable view (it writes the values).
            let mut dense = w.write()?;
            let meta_g = meta.read()?;
            let offsets_g = offsets.as_ref().map(Tensor::read).transpose()?;
            let offsets_s = offsets_g.as_ref().map(|g| g.cuda::<u32>()).transpose()?;
            super::cuda::gather(
                dev,
                rows,
                cols,
                format,
                values.slice_mut(),
                meta_g.cuda::<u8>()?,
                offsets_s,
                &mut dense.cuda_mut::<T>()?.slice_mut(..),
            )?;
        }
        Ok(SparseWeight {
            rows,
            cols,
            format,
            values: crate::tensor::cuda_tensor(values, values_shape, device)?,
            meta,
            row_offsets: offsets,
        })
    }

    fn compress_typed<T: FloatElement>(w: &Tensor, mask: &BitMask, format: SparseFormat) -> Result<Self> {
        let (rows, cols) = (mask.rows(), mask.cols());
        let dense = w.to_vec::<T>()?;
        let device = w.device();
        match format {
            SparseFormat::Bitmask => {
                let mut values = Vec::with_capacity(mask.kept());
                let mut offsets = Vec::with_capacity(rows + 1);
                for r in 0..rows {
                    offsets.push(values.len() as u32);
                    values.extend((0..cols).filter(|&c| mask.get(r, c)).map(|c| dense[r * cols + c]));
                }
                offsets.push(values.len() as u32);
                if values.len() > u32::MAX as usize {
                    return Err(Error::invalid("sparse weight has more than 2³² kept values"));
                }
                let nnz = values.len();
                Ok(SparseWeight {
                    rows,
                    cols,
                    format,
                    values: Tensor::from_vec(values, [nnz], device)?,
                    meta: Tensor::from_vec(mask.bytes().to_vec(), [rows, BitMask::stride_for(cols)], device)?,
                    row_offsets: Some(Tensor::from_vec(offsets, [rows + 1], device)?),
                })
            }
            SparseFormat::NM { n, m } => {
                let c = NmMatrix::compress(&dense, mask, n, m)?;
                let stride = NmMatrix::<T>::index_stride(cols, n, m);
                Ok(SparseWeight {
                    rows,
                    cols,
                    format,
                    values: Tensor::from_vec(c.values().to_vec(), [rows, cols / m * n], device)?,
                    meta: Tensor::from_vec(c.indices().to_vec(), [rows, stride], device)?,
                    row_offsets: None,
                })
            }
        }
    }

    /// Compresses a dense weight whose pruned entries are zero: Bitmask keeps the
    /// non-zeros; N:M keeps the non-zeros of each group, filled up to N with its first zero
    /// positions (a kept weight can be exactly 0), and errors where a group has more than N.
    /// On CUDA the mask is found on the device (`cuda/sparse.cu`) and only its bits come to
    /// the host (an N:M fill is decided there), then [`Self::compress`] packs (a bitmask on
    /// the device).
    pub fn from_dense(w: &Tensor, format: SparseFormat) -> Result<Self> {
        let [rows, cols] = w.shape().dims_n::<2>("sparse weight")?;
        let mut mask = match w.device() {
            Device::Cpu(_) => BitMask::from_nonzero(&w.to_f32_vec()?, rows, cols)?,
            Device::Cuda(dev) => with_compute_type!(w.dtype(), "sparse weight", T => {
                BitMask::from_bytes(rows, cols, super::cuda::nonzero_mask::<T>(dev, w.read()?.cuda::<T>()?, rows, cols)?)
            })?,
        };
        if let SparseFormat::NM { n, m } = format {
            check_nm(n, m, cols)?;
            for r in 0..rows {
                for g in (0..cols).step_by(m) {
                    let kept = (g..g + m).filter(|&c| mask.get(r, c)).count();
                    if kept > n {
                        return Err(Error::invalid(format!(
                            "row {r}, group at column {g} has {kept} non-zeros: not {n}:{m} sparse"
                        )));
                    }
                    let fill: Vec<usize> = (g..g + m).filter(|&c| !mask.get(r, c)).take(n - kept).collect();
                    for c in fill {
                        mask.set(r, c, true);
                    }
                }
            }
        }
        Self::compress(w, &mask, format)
    }

    /// Rows (out features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (in features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Layout.
    pub fn format(&self) -> SparseFormat {
        self.format
    }

    /// Value dtype.
    pub fn dtype(&self) -> DType {
        self.values.dtype()
    }

    /// Device.
    pub fn device(&self) -> &Device {
        self.values.device()
    }

    /// Kept values.
    pub fn nnz(&self) -> usize {
        self.values.elem_count()
    }

    /// The packed values.
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// Mask bytes (Bitmask) or packed N:M positions (NM).
    pub fn meta(&self) -> &Tensor {
        &self.meta
    }

    /// Row offsets (Bitmask only).
    pub fn row_offsets(&self) -> Option<&Tensor> {
        self.row_offsets.as_ref()
    }

    /// Bytes held (values, mask or positions, row offsets).
    pub fn bytes(&self) -> usize {
        self.values.size_in_bytes()
            + self.meta.size_in_bytes()
            + self.row_offsets.as_ref().map_or(0, Tensor::size_in_bytes)
    }

    /// The mask, on the host.
    pub fn mask(&self) -> Result<BitMask> {
        let meta = self.meta.to_vec::<u8>()?;
        match self.format {
            SparseFormat::Bitmask => BitMask::from_bytes(self.rows, self.cols, meta),
            SparseFormat::NM { .. } => {
                let mut mask = BitMask::all_pruned(self.rows, self.cols);
                let stride = super::cpu::meta_stride(self.cols, self.format);
                for r in 0..self.rows {
                    super::cpu::visit_row(self.cols, self.format, &meta[r * stride..(r + 1) * stride], |c, _| {
                        mask.set(r, c, true)
                    });
                }
                Ok(mask)
            }
        }
    }

    /// Expands into the host buffer `out` (≥ rows·cols elements of the value dtype).
    pub fn expand_into_host<T: FloatElement>(&self, out: &mut [T], mode: Expand) -> Result<()> {
        let n = self.rows * self.cols;
        if out.len() < n || T::DTYPE != self.dtype() || self.device().is_cuda() {
            return Err(Error::invalid(format!(
                "expand: {} {} elements on the host for a {}x{} {} weight on {}",
                out.len(),
                T::DTYPE,
                self.rows,
                self.cols,
                self.dtype(),
                self.device().label()
            )));
        }
        let values = self.values.read()?;
        let meta = self.meta.read()?;
        let offsets = match &self.row_offsets {
            Some(t) => Some(t.read()?),
            None => None,
        };
        super::cpu::expand(
            self.rows,
            self.cols,
            self.format,
            values.cpu::<T>()?,
            meta.cpu::<u8>()?,
            offsets.as_ref().map(|g| g.cpu::<u32>()).transpose()?,
            &mut out[..n],
            mode,
        );
        Ok(())
    }

    /// Expands into the device buffer `out` (≥ rows·cols elements of the value dtype).
    pub fn expand_into_cuda<T: CudaFloat>(&self, out: &mut CudaViewMut<'_, T>, mode: Expand) -> Result<()> {
        let Device::Cuda(dev) = self.device() else {
            return Err(Error::invalid("expand_into_cuda: the weight is on the CPU"));
        };
        if T::DTYPE != self.dtype() {
            return Err(Error::DType {
                op: "sparse expand",
                dtype: T::DTYPE,
                msg: "workspace dtype differs from the weight's",
            });
        }
        let values = self.values.read()?;
        let meta = self.meta.read()?;
        let offsets = match &self.row_offsets {
            Some(t) => Some(t.read()?),
            None => None,
        };
        let offsets: Option<&CudaSlice<u32>> = offsets.as_ref().map(|g| g.cuda::<u32>()).transpose()?;
        super::cuda::expand(
            dev,
            self.rows,
            self.cols,
            self.format,
            values.cuda::<T>()?,
            meta.cuda::<u8>()?,
            offsets,
            out,
            mode,
        )
    }

    /// Zeroes the pruned entries of the device buffer `out` [rows, width] (row stride
    /// `width`), which holds this weight's columns `col0 .. col0 + width` (`col0` a multiple
    /// of 8); the kept entries stay. `Expand::MaskOnly` is the window of every column.
    pub fn mask_columns_cuda<T: CudaFloat>(
        &self,
        out: &mut CudaViewMut<'_, T>,
        col0: usize,
        width: usize,
    ) -> Result<()> {
        let Device::Cuda(dev) = self.device() else {
            return Err(Error::invalid("mask_columns_cuda: the weight is on the CPU"));
        };
        let meta = self.meta.read()?;
        super::cuda::mask_window(dev, self.rows, self.cols, self.format, meta.cuda::<u8>()?, out, col0, width)
    }

    /// The kept entries of the host matrix `dense` [rows·cols], in value order (the
    /// gradient of the kept values from a dense gradient; the inverse of expand).
    pub fn gather_host<T: FloatElement>(&self, dense: &[T]) -> Result<Vec<T>> {
        if dense.len() < self.rows * self.cols || self.device().is_cuda() {
            return Err(Error::invalid(format!(
                "gather: {} host elements for a {}x{} weight on {}",
                dense.len(),
                self.rows,
                self.cols,
                self.device().label()
            )));
        }
        let meta = self.meta.read()?;
        let offsets = match &self.row_offsets {
            Some(t) => Some(t.read()?),
            None => None,
        };
        let mut out = vec![T::default(); self.nnz()];
        super::cpu::gather(
            self.rows,
            self.cols,
            self.format,
            &mut out,
            meta.cpu::<u8>()?,
            offsets.as_ref().map(|g| g.cpu::<u32>()).transpose()?,
            dense,
        );
        Ok(out)
    }

    /// As [`SparseWeight::gather_host`], from a device buffer (≥ rows·cols, not modified).
    pub fn gather_cuda<T: CudaFloat>(
        &self,
        dense: &mut CudaViewMut<'_, T>,
    ) -> Result<crate::device::cuda::CudaBuffer<T>> {
        let Device::Cuda(dev) = self.device() else {
            return Err(Error::invalid("gather_cuda: the weight is on the CPU"));
        };
        let meta = self.meta.read()?;
        let offsets = match &self.row_offsets {
            Some(t) => Some(t.read()?),
            None => None,
        };
        let offsets: Option<&CudaSlice<u32>> = offsets.as_ref().map(|g| g.cuda::<u32>()).transpose()?;
        let mut out = dev.alloc::<T>(self.nnz())?;
        super::cuda::gather(
            dev,
            self.rows,
            self.cols,
            self.format,
            out.slice_mut(),
            meta.cuda::<u8>()?,
            offsets,
            dense,
        )?;
        Ok(out)
    }

    /// Moves the weight to a new pattern `mask` with values taken from `dense` [rows, cols]
    /// at its kept positions, keeping the values tensor itself (written in place, so that
    /// handles to it, e.g. an optimizer's, stay valid): the new mask must keep exactly as
    /// many entries as the old one (and be N:M for an N:M weight).
    pub fn repack(&mut self, dense: &Tensor, mask: &BitMask) -> Result<()> {
        let fresh = SparseWeight::compress(&dense.to_dtype(self.dtype())?, mask, self.format)?;
        if fresh.values.dims() != self.values.dims() {
            return Err(Error::invalid(format!(
                "repack: the new mask keeps {} entries, the weight holds {}",
                fresh.nnz(),
                self.nnz()
            )));
        }
        let device = self.device().clone();
        self.values.copy_from(&fresh.values.to_device(&device)?)?;
        self.meta = fresh.meta.to_device(&device)?;
        self.row_offsets = fresh.row_offsets.map(|t| t.to_device(&device)).transpose()?;
        Ok(())
    }

    /// The dense matrix W⊙M as a new tensor [rows, cols].
    pub fn to_dense(&self) -> Result<Tensor> {
        let n = self.rows * self.cols;
        with_compute_type!(self.dtype(), "sparse to_dense", T => {
            match self.device() {
                Device::Cpu(_) => {
                    let mut out = vec![T::default(); n];
                    self.expand_into_host(&mut out, Expand::Overwrite)?;
                    Tensor::from_vec(out, [self.rows, self.cols], self.device())
                }
                Device::Cuda(dev) => {
                    let mut out = dev.alloc::<T>(n)?;
                    self.expand_into_cuda(&mut out.slice_mut().slice_mut(..), Expand::Overwrite)?;
                    crate::tensor::cuda_tensor(out, [self.rows, self.cols], self.device())
                }
            }
        })
    }

    /// A copy on another device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(SparseWeight {
            values: self.values.to_device(device)?,
            meta: self.meta.to_device(device)?,
            row_offsets: self.row_offsets.as_ref().map(|t| t.to_device(device)).transpose()?,
            ..self.clone()
        })
    }

    /// A copy with values in another float dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        Ok(SparseWeight { values: self.values.to_dtype(dtype)?, ..self.clone() })
    }
}

/// Element types a workspace can hold.
pub trait WorkspaceElement: FloatElement + CudaFloat + Element {}
impl WorkspaceElement for f32 {}
impl WorkspaceElement for half::bf16 {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random_f32, random_mask};

    /// What a case prunes: (sparsity, N:M pair), as [`random_mask`] takes them.
    type Rule = (f64, Option<(usize, usize)>);

    fn pruned(rows: usize, cols: usize, (s, nm): Rule, dtype: DType, dev: &Device, seed: u64) -> (Tensor, BitMask) {
        let mut v = random_f32(rows * cols, 1.0, seed);
        let mask = random_mask(rows, cols, s, nm, seed + 1);
        mask.apply(&mut v).unwrap();
        (Tensor::from_f32(v, [rows, cols], dtype, dev).unwrap(), mask)
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_f32_vec().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    fn cases() -> Vec<(usize, usize, Rule, SparseFormat)> {
        vec![
            (7, 37, (0.5, None), SparseFormat::Bitmask),
            (13, 64, (0.7, None), SparseFormat::Bitmask),
            (3, 9, (0.0, None), SparseFormat::Bitmask),
            (5, 40, (0.0, Some((2, 4))), SparseFormat::Bitmask),
            (5, 40, (0.0, Some((2, 4))), SparseFormat::NM { n: 2, m: 4 }),
            (9, 48, (0.0, Some((4, 8))), SparseFormat::NM { n: 4, m: 8 }),
            (2, 12, (0.0, Some((1, 4))), SparseFormat::NM { n: 1, m: 4 }),
        ]
    }

    #[test]
    fn round_trip_is_bit_exact_on_cpu() {
        let dev = Device::cpu();
        for dtype in [DType::F32, DType::BF16] {
            for (rows, cols, pattern, format) in cases() {
                let (w, mask) = pruned(rows, cols, pattern, dtype, &dev, 3);
                let s = SparseWeight::compress(&w, &mask, format).unwrap();
                assert_eq!(bits(&s.to_dense().unwrap()), bits(&w), "{dtype} {rows}x{cols} {pattern:?} {format:?}");
                assert_eq!(s.mask().unwrap(), mask);
                assert_eq!(s.nnz(), mask.kept());
                let again = SparseWeight::from_dense(&w, format).unwrap();
                assert_eq!(bits(&again.to_dense().unwrap()), bits(&w));
            }
        }
    }

    /// Gather is the inverse of expand (bit-exact on the CPU and CUDA); repack moves the
    /// pattern and writes the same values tensor.
    #[test]
    fn gather_inverts_expand_and_repack_keeps_the_values_tensor_on_cpu_and_cuda() {
        let cpu = Device::cpu();
        let gpu = crate::device::cuda_for_tests(
            "sparse::weight::gather_inverts_expand_and_repack_keeps_the_values_tensor_on_cpu_and_cuda",
        );
        for dtype in [DType::F32, DType::BF16] {
            for (rows, cols, pattern, format) in cases() {
                let what = format!("{dtype} {rows}x{cols} {pattern:?} {format:?}");
                let (w, mask) = pruned(rows, cols, pattern, dtype, &cpu, 5);
                let s = SparseWeight::compress(&w, &mask, format).unwrap();
                with_compute_type!(dtype, "test", T => {
                    let dense = w.to_vec::<T>().unwrap();
                    let got = s.gather_host(&dense).unwrap();
                    assert_eq!(got, s.values().to_vec::<T>().unwrap(), "{what} host");
                    if let Some(gpu) = &gpu {
                        let g = s.to_device(gpu).unwrap();
                        let wd = w.to_device(gpu).unwrap();
                        let mut guard = wd.write().unwrap();
                        let slice = guard.cuda_mut::<T>().unwrap();
                        let out = g.gather_cuda(&mut slice.slice_mut(..)).unwrap();
                        let Device::Cuda(d) = gpu else { unreachable!() };
                        assert_eq!(d.dtoh(out.slice()).unwrap(), got, "{what} cuda");
                    }
                    Ok::<(), Error>(())
                })
                .unwrap();
            }
        }
        // Repack: a new pattern with as many kept entries, written into the same tensor.
        let (w, mask) = pruned(6, 16, (0.5, None), DType::F32, &cpu, 9);
        let mut s = SparseWeight::compress(&w, &mask, SparseFormat::Bitmask).unwrap();
        let handle = s.values().clone();
        let flipped = BitMask::from_fn(6, 16, |r, c| !mask.get(r, c));
        let other = Tensor::from_f32(random_f32(96, 1.0, 4), [6, 16], DType::F32, &cpu).unwrap();
        s.repack(&other, &flipped).unwrap();
        assert_eq!(s.mask().unwrap(), flipped);
        let mut want = other.to_f32_vec().unwrap();
        flipped.apply(&mut want).unwrap();
        assert_eq!(s.to_dense().unwrap().to_f32_vec().unwrap(), want);
        assert_eq!(handle.to_f32_vec().unwrap(), s.values().to_f32_vec().unwrap(), "written in place");
        assert!(s.repack(&other, &BitMask::all_kept(6, 16)).is_err(), "a different count is refused");
    }

    #[test]
    fn bf16_bitmask_at_half_sparsity_costs_1_125_bytes_per_weight_plus_offsets() {
        let dev = Device::cpu();
        let (rows, cols) = (64, 512);
        let (w, mask) = pruned(rows, cols, (0.5, None), DType::BF16, &dev, 5);
        let before = dev.memory().current_bytes;
        let s = SparseWeight::compress(&w, &mask, SparseFormat::Bitmask).unwrap();
        let expected = rows * cols / 2 * 2 + rows * cols / 8 + (rows + 1) * 4;
        assert_eq!(s.bytes(), expected);
        assert_eq!(dev.memory().current_bytes - before, expected, "the allocator counts what the weight holds");
        assert!((s.bytes() as f64 / (rows * cols) as f64 - 1.125).abs() < 0.01);
    }

    #[test]
    fn add_kept_masks_what_is_in_the_buffer() {
        let dev = Device::cpu();
        let (w, mask) = pruned(4, 16, (0.5, None), DType::F32, &dev, 7);
        let s = SparseWeight::compress(&w, &mask, SparseFormat::Bitmask).unwrap();
        let mut out = vec![1.5f32; 4 * 16 + 3];
        s.expand_into_host(&mut out, Expand::AddKept).unwrap();
        let wv = w.to_f32_vec().unwrap();
        for k in 0..64 {
            let want = if mask.get(k / 16, k % 16) { wv[k] + 1.5 } else { 0.0 };
            assert_eq!(out[k], want);
        }
        assert_eq!(&out[64..], &[1.5, 1.5, 1.5], "nothing beyond rows·cols is touched");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::cpu();
        let w = Tensor::from_f32(vec![1.0; 8], [2, 4], DType::F32, &dev).unwrap();
        assert!(SparseWeight::from_dense(&w, SparseFormat::NM { n: 2, m: 4 }).is_err(), "4 non-zeros in a 2:4 group");
        assert!(SparseWeight::compress(&w, &BitMask::all_kept(2, 5), SparseFormat::Bitmask).is_err());
        let s = SparseWeight::from_dense(&w, SparseFormat::Bitmask).unwrap();
        let mut short = vec![0f32; 7];
        assert!(s.expand_into_host(&mut short, Expand::Overwrite).is_err());
        let mut wrong = vec![half::bf16::ZERO; 8];
        assert!(s.expand_into_host(&mut wrong, Expand::Overwrite).is_err());
    }

    #[test]
    fn compress_and_from_dense_on_cuda_match_cpu() {
        let Some(gpu) = crate::device::cuda_for_tests("sparse::weight::compress_and_from_dense_on_cuda_match_cpu")
        else {
            return;
        };
        let cpu = Device::cpu();
        let host = |t: &Tensor| t.to_device(&cpu).unwrap().to_le_bytes().unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let mut all = cases();
            all.push((33, 4099, (1.0, None), SparseFormat::Bitmask));
            all.push((70, 1028, (0.0, Some((2, 4))), SparseFormat::NM { n: 2, m: 4 }));
            for (rows, cols, pattern, format) in all {
                let what = format!("{dtype} {rows}x{cols} {pattern:?} {format:?}");
                let (w, mask) = pruned(rows, cols, pattern, dtype, &cpu, 21);
                let on_cpu = SparseWeight::compress(&w, &mask, format).unwrap();
                let w_gpu = w.to_device(&gpu).unwrap();
                for (how, on_gpu) in [
                    ("compress", SparseWeight::compress(&w_gpu, &mask, format).unwrap()),
                    ("from_dense", SparseWeight::from_dense(&w_gpu, format).unwrap()),
                ] {
                    let want = if how == "from_dense" {
                        SparseWeight::from_dense(&w, format).unwrap()
                    } else {
                        on_cpu.clone()
                    };
                    assert_eq!(host(on_gpu.values()), host(want.values()), "{what} {how}: values");
                    assert_eq!(host(on_gpu.meta()), host(want.meta()), "{what} {how}: mask or positions");
                    let offsets = |s: &SparseWeight| s.row_offsets().map(host);
                    assert_eq!(offsets(&on_gpu), offsets(&want), "{what} {how}: row offsets");
                }
                assert_eq!(bits(&w_gpu), bits(&w), "{what}: the weight was changed");
            }
        }
    }

    #[test]
    fn cuda_expand_matches_cpu() {
        let Some(gpu) = crate::device::cuda_for_tests("sparse::weight::cuda_expand_matches_cpu") else { return };
        let cpu = Device::cpu();
        for dtype in [DType::F32, DType::BF16] {
            let mut all = cases();
            all.push((300, 4099, (0.5, None), SparseFormat::Bitmask));
            all.push((33, 11008, (0.6, None), SparseFormat::Bitmask));
            all.push((70, 1028, (0.0, Some((2, 4))), SparseFormat::NM { n: 2, m: 4 }));
            for (rows, cols, pattern, format) in all {
                let what = format!("{dtype} {rows}x{cols} {pattern:?} {format:?}");
                let (w, mask) = pruned(rows, cols, pattern, dtype, &cpu, 11);
                let s = SparseWeight::compress(&w, &mask, format).unwrap();
                let g = s.to_device(&gpu).unwrap();
                assert_eq!(bits(&g.to_dense().unwrap()), bits(&w), "{what} overwrite");
                assert_eq!(g.mask().unwrap(), mask, "{what} mask");
                // AddKept over a buffer holding 0.25 everywhere (and a tail that must stay).
                let fill = Tensor::from_f32(vec![0.25; rows * cols + 5], [rows * cols + 5], dtype, &gpu).unwrap();
                {
                    let mut guard = fill.write().unwrap();
                    with_compute_type!(dtype, "test", T => {
                        let slice = guard.cuda_mut::<T>().unwrap();
                        g.expand_into_cuda(&mut slice.slice_mut(..), Expand::AddKept)
                    })
                    .unwrap();
                }
                let got = fill.to_f32_vec().unwrap();
                let wv = w.to_f32_vec().unwrap();
                for k in 0..rows * cols {
                    let want = if mask.get(k / cols, k % cols) { from_sum(dtype, wv[k] + 0.25) } else { 0.0 };
                    assert_eq!(got[k].to_bits(), want.to_bits(), "{what} add-kept at {k}");
                }
                assert!(got[rows * cols..].iter().all(|&v| v == 0.25), "{what}: tail touched");
                // Masking: the whole matrix (MaskOnly), and windows of columns that start at a
                // multiple of 8 (the middle, the end with an uneven width).
                let mut windows = vec![(0, cols, true), ((cols / 16) * 8, cols - (cols / 16) * 8, false)];
                if cols > 8 {
                    windows.push((8, (cols - 8).min(16), false));
                }
                for (col0, width, whole) in windows {
                    let n = rows * width;
                    let start: Vec<f32> = (0..n + 3).map(|k| 1.0 + k as f32 * 0.125).collect();
                    let buf = Tensor::from_f32(start.clone(), [n + 3], dtype, &gpu).unwrap();
                    let start = buf.to_f32_vec().unwrap();
                    {
                        let mut guard = buf.write().unwrap();
                        with_compute_type!(dtype, "test", T => {
                            let slice = guard.cuda_mut::<T>().unwrap();
                            if whole {
                                g.expand_into_cuda(&mut slice.slice_mut(..), Expand::MaskOnly)
                            } else {
                                g.mask_columns_cuda(&mut slice.slice_mut(..), col0, width)
                            }
                        })
                        .unwrap();
                    }
                    let got = buf.to_f32_vec().unwrap();
                    for k in 0..n {
                        let want = if mask.get(k / width, col0 + k % width) { start[k] } else { 0.0 };
                        assert_eq!(got[k], want, "{what} mask of columns {col0}..+{width} at {k}");
                    }
                    assert_eq!(got[n..], start[n..], "{what}: tail touched by the mask");
                }
                // A window that starts off a mask byte or runs past the matrix is refused.
                let buf = Tensor::zeros([rows * cols], dtype, &gpu).unwrap();
                let mut guard = buf.write().unwrap();
                with_compute_type!(dtype, "test", T => {
                    let slice = guard.cuda_mut::<T>().unwrap();
                    assert!(g.mask_columns_cuda(&mut slice.slice_mut(..), 4, 1).is_err(), "{what}: col0 4");
                    assert!(g.mask_columns_cuda(&mut slice.slice_mut(..), 0, cols + 1).is_err(), "{what}: past");
                    Ok::<_, Error>(())
                })
                .unwrap();
            }
        }
    }

    fn from_sum(dtype: DType, v: f32) -> f32 {
        if dtype == DType::BF16 {
            half::bf16::from_f32(v).to_f32()
        } else {
            v
        }
    }
}
