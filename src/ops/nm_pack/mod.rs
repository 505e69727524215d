//! N:M compression on the GPU, in the [`crate::sparse::NmMatrix`] layout (no gradient).
//!
//! A dense [rows, cols] matrix whose mask keeps exactly N of every M consecutive columns of a
//! row becomes
//! - `values`: [rows, cols/M·N], the kept values of each group in column order (the dense
//!   dtype, bits copied unchanged);
//! - `indices`: U8 [rows, ceil(cols/M·N·bits / 8)], bits = ceil(log2 M): each kept value's
//!   in-group position, LSB first, rows padded to whole bytes (padding bits zero).
//!
//! CPU reference: `crate::sparse::NmMatrix::{compress, decompress}` (no separate cpu.rs); the
//! bytes here are the reference's, bit for bit. A mask with a group that does not keep
//! exactly N is an error (found on the device, read back once per call), as on the CPU.

pub mod cuda;

use crate::ops::check_mask;
use crate::ops::{cuda_device, cuda_tensor, expect_float};
use crate::sparse::{check_nm, NmMatrix};
use crate::{with_compute_type, DType, Error, Result, Shape, Tensor};

/// Bytes of packed indices per row.
fn index_stride(cols: usize, n: usize, m: usize) -> usize {
    NmMatrix::<u8>::index_stride(cols, n, m)
}

/// Error unless both dimensions are non-zero.
fn check_non_empty(op: &'static str, rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(Error::BadShape { op, shape: Shape::new([rows, cols]), msg: "expected a non-empty matrix".into() });
    }
    Ok(())
}

/// Compresses the CUDA matrix `dense` [rows, cols] (F32 or BF16) under the U8 bitmask `mask`
/// [rows, ceil(cols/8)], which must keep exactly `n` of every `m` consecutive columns:
/// returns `(values [rows, cols/m·n] in dense's dtype, indices U8 [rows, stride])`.
pub fn compress(dense: &Tensor, mask: &Tensor, n: usize, m: usize) -> Result<(Tensor, Tensor)> {
    let op = "nm_pack compress";
    expect_float(op, dense)?;
    let [rows, cols] = dense.shape().dims_n::<2>(op)?;
    check_non_empty(op, rows, cols)?;
    check_nm(n, m, cols)?;
    let dev = cuda_device(dense)?;
    check_mask(op, mask, dense.device(), rows, cols)?;
    let (per_row, stride) = (cols / m * n, index_stride(cols, n, m));
    let mut indices = dev.alloc::<u8>(rows * stride)?;
    with_compute_type!(dense.dtype(), op, T => {
        let mut values = dev.alloc::<T>(rows * per_row)?;
        let bad = cuda::compress::<T>(
            dev,
            dense.read()?.cuda::<T>()?,
            mask.read()?.cuda::<u8>()?,
            values.slice_mut(),
            indices.slice_mut(),
            rows,
            cols,
            n,
            m,
        )?;
        if let Some((r, g)) = bad {
            return Err(Error::invalid(format!(
                "{op}: row {r}, group {g} does not keep exactly {n} entries as {n}:{m} needs"
            )));
        }
        Ok((
            cuda_tensor(values, [rows, per_row], dense.device())?,
            cuda_tensor(indices, [rows, stride], dense.device())?,
        ))
    })
}

/// The dense [rows, cols] matrix of N:M `values` [rows, cols/m·n] (F32 or BF16) and
/// `indices` U8 [rows, stride] (both CUDA), zeros at pruned entries: bit for bit
/// `NmMatrix::decompress`. Indices are trusted to come from [`compress`]; a position ≥ m
/// is never read outside the buffers (its value is dropped), and two slots of a group with
/// one position resolve to the later slot, as on the CPU.
pub fn decompress(values: &Tensor, indices: &Tensor, rows: usize, cols: usize, n: usize, m: usize) -> Result<Tensor> {
    let op = "nm_pack decompress";
    expect_float(op, values)?;
    check_non_empty(op, rows, cols)?;
    check_nm(n, m, cols)?;
    let dev = cuda_device(values)?;
    let (per_row, stride) = (cols / m * n, index_stride(cols, n, m));
    values.shape().expect_eq(op, &Shape::new([rows, per_row]))?;
    if indices.dtype() != DType::U8 {
        return Err(Error::DType { op, dtype: indices.dtype(), msg: "indices are u8 bytes" });
    }
    if !indices.device().same(values.device()) {
        return Err(Error::DeviceMismatch { op, lhs: values.device().label(), rhs: indices.device().label() });
    }
    indices.shape().expect_eq(op, &Shape::new([rows, stride]))?;
    with_compute_type!(values.dtype(), op, T => {
        let mut dense = dev.alloc::<T>(rows * cols)?;
        cuda::decompress::<T>(
            dev,
            values.read()?.cuda::<T>()?,
            indices.read()?.cuda::<u8>()?,
            dense.slice_mut(),
            rows,
            cols,
            n,
            m,
        )?;
        cuda_tensor(dense, [rows, cols], values.device())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda_for_tests;
    use crate::ops::prune_select::cpu::prune_lowest_nm;
    use crate::sparse::BitMask;
    use crate::testing::random_f32;
    use crate::Device;

    #[test]
    fn cpu_tensors_are_errors() {
        let cpu = Device::cpu();
        let dense = Tensor::zeros([2, 8], DType::F32, &cpu).unwrap();
        let mask = Tensor::zeros([2, 1], DType::U8, &cpu).unwrap();
        assert!(compress(&dense, &mask, 2, 4).is_err());
        let values = Tensor::zeros([2, 4], DType::F32, &cpu).unwrap();
        assert!(decompress(&values, &mask, 2, 8, 2, 4).is_err());
    }

    #[test]
    fn cuda_matches_cpu_bytes() {
        let Some(gpu) = cuda_for_tests("nm_pack::cuda_matches_cpu_bytes") else { return };
        let cpu = Device::cpu();
        for dtype in [DType::F32, DType::BF16] {
            for (n, m) in [(2, 4), (4, 8), (1, 4), (3, 8), (5, 16), (1, 2), (2, 6)] {
                for (rows, groups) in [(1, 3), (7, 11), (37, 130)] {
                    let cols = m * groups;
                    let what = format!("nm_pack {dtype} {n}:{m} {rows}x{cols}");
                    let scores = random_f32(rows * cols, 1.0, (rows * cols + n) as u64);
                    let mask = prune_lowest_nm(&scores, rows, cols, n, m).unwrap();
                    let w = Tensor::from_f32(random_f32(rows * cols, 2.0, 5), [rows, cols], dtype, &cpu).unwrap();
                    let mask_g = Tensor::from_vec(mask.bytes().to_vec(), [rows, cols.div_ceil(8)], &gpu).unwrap();
                    let (values, indices) = compress(&w.to_device(&gpu).unwrap(), &mask_g, n, m).unwrap();
                    let stride = index_stride(cols, n, m);
                    assert_eq!(values.dims(), [rows, cols / m * n], "{what}");
                    assert_eq!((indices.dims(), values.dtype()), ([rows, stride].as_slice(), dtype), "{what}");
                    let back = decompress(&values, &indices, rows, cols, n, m).unwrap();
                    with_compute_type!(dtype, "test", T => {
                        let want = NmMatrix::compress(&w.to_vec::<T>().unwrap(), &mask, n, m).unwrap();
                        let bits = |v: &[T]| bytemuck::cast_slice::<T, u8>(v).to_vec();
                        assert_eq!(bits(&values.to_vec::<T>().unwrap()), bits(want.values()), "{what} values");
                        assert_eq!(indices.to_vec::<u8>().unwrap(), want.indices(), "{what} indices");
                        assert_eq!(bits(&back.to_vec::<T>().unwrap()), bits(&want.decompress()), "{what} decompress");
                        Ok::<(), Error>(())
                    })
                    .unwrap();
                }
            }
        }
    }

    #[test]
    fn cuda_bad_masks_are_errors() {
        let Some(gpu) = cuda_for_tests("nm_pack::cuda_bad_masks_are_errors") else { return };
        let (rows, cols) = (5, 36);
        let dense = Tensor::from_f32(random_f32(rows * cols, 1.0, 3), [rows, cols], DType::F32, &gpu).unwrap();
        let upload = |mask: &BitMask| Tensor::from_vec(mask.bytes().to_vec(), [rows, cols.div_ceil(8)], &gpu).unwrap();
        let good = prune_lowest_nm(&random_f32(rows * cols, 1.0, 4), rows, cols, 2, 4).unwrap();
        assert!(compress(&dense, &upload(&good), 2, 4).is_ok());
        // One group with three kept, one with one kept.
        for (c, keep) in [(33, true), (34, false)] {
            let mut bad = good.clone();
            let flip = (c - c % 4..c - c % 4 + 4).find(|&k| bad.get(3, k) != keep).unwrap();
            bad.set(3, flip, keep);
            let e = compress(&dense, &upload(&bad), 2, 4).unwrap_err().to_string();
            assert!(e.contains("row 3, group 8"), "{e}");
        }
        assert!(compress(&dense, &upload(&BitMask::all_kept(rows, cols)), 2, 4).is_err());
        assert!(compress(&dense, &upload(&good), 2, 5).is_err(), "5 does not divide 36");
        assert!(compress(&dense, &Tensor::zeros([rows, 4], DType::U8, &gpu).unwrap(), 2, 4).is_err());
        let (values, indices) = compress(&dense, &upload(&good), 2, 4).unwrap();
        assert!(decompress(&values, &indices, rows, cols + 4, 2, 4).is_err(), "wrong shape");
        assert!(decompress(&indices, &indices, rows, cols, 2, 4).is_err(), "u8 values");
    }
}
