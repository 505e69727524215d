//! Pruning scores and mask selection on the GPU (no gradient: these are not tape ops).
//!
//! Scores of a weight W [rows = out, cols = in] (F32 or BF16), returned as F32 [rows, cols],
//! computed in f64 and rounded once, as the CPU reference does:
//! - [`magnitude_scores`] gives `|W_ij|`;
//! - [`wanda_scores`] gives `|W_ij| · sqrt(scaler_row_j)` (bit-identical to the CPU: one correctly
//!   rounded sqrt and product);
//! - [`ria_scores`] gives `(|W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik|) · sqrt(scaler_row_j)^a`
//!   (the sums run in another order than on the CPU, and `pow` is not correctly rounded, so
//!   it agrees to ~1e-7 relative, not bit for bit).
//!
//! Masks ([`select_rows_lowest`], [`select_nm`], [`select_flat_lowest`]) are U8 bitmasks [rows, ceil(cols/8)] in the
//! [`crate::sparse::BitMask`] layout (bit j % 8 of byte j / 8 of a row, 1 = kept), the same
//! bytes the CPU reference returns: prune the k lowest scores of a row, or the M − N lowest
//! of every group of M, ordering by (score, column) with NaN equal to −∞ (so ties, NaN
//! among them, prune lower columns first) and −0 below +0 (`f32::total_cmp`).
//! [`apply_mask`] zeroes the pruned entries of a matrix.
//!
//! The kernels take plain numbers (k, or N and M); which pattern a pruning method asks for
//! is decided in `crate::prune`.
//!
//! CPU reference: [`cpu`] (`magnitude`, `wanda`, `ria`, `prune_lowest_per_row`,
//! `prune_lowest_nm`) and `crate::sparse::BitMask::apply`.

pub mod cpu;
pub mod cuda;

use cudarc::driver::CudaSlice;

use crate::device::CudaDevice;
use crate::ops::{check_mask, cuda_device, cuda_tensor, expect_float};
use crate::{with_compute_type, DType, Error, Result, Tensor};

/// (rows, cols) of a non-empty rank-2 tensor.
fn matrix_dims(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    let [rows, cols] = t.shape().dims_n::<2>(op)?;
    if rows == 0 || cols == 0 {
        return Err(Error::BadShape { op, shape: t.shape().clone(), msg: "expected a non-empty matrix".into() });
    }
    Ok((rows, cols))
}

/// (rows, cols) of a non-empty F32 score matrix.
fn score_dims(op: &'static str, scores: &Tensor) -> Result<(usize, usize)> {
    if scores.dtype() != DType::F32 {
        return Err(Error::DType { op, dtype: scores.dtype(), msg: "scores must be f32" });
    }
    matrix_dims(op, scores)
}

/// Error unless `scaler_row` holds `cols` values on `dev`.
fn check_scaler(op: &'static str, dev: &CudaDevice, scaler_row: &CudaSlice<f64>, cols: usize) -> Result<()> {
    if !std::sync::Arc::ptr_eq(scaler_row.context(), dev.stream().context()) {
        return Err(Error::invalid(format!("{op}: scaler_row lives on another CUDA context than the weight")));
    }
    if scaler_row.len() != cols {
        return Err(Error::invalid(format!("{op}: scaler_row has {} values for {cols} columns", scaler_row.len())));
    }
    Ok(())
}

/// `|W|` as F32 [rows, cols], for a CUDA weight [rows, cols] (F32 or BF16).
pub fn magnitude_scores(w: &Tensor) -> Result<Tensor> {
    let op = "magnitude_scores";
    expect_float(op, w)?;
    let (rows, cols) = matrix_dims(op, w)?;
    let dev = cuda_device(w)?;
    with_compute_type!(w.dtype(), op, T => {
        let mut out = dev.alloc::<f32>(rows * cols)?;
        cuda::magnitude::<T>(dev, w.read()?.cuda::<T>()?, out.slice_mut(), rows * cols)?;
        cuda_tensor(out, [rows, cols], w.device())
    })
}

/// Wanda's `|W_ij| · sqrt(scaler_row_j)` as F32 [rows, cols]; `scaler_row` `[cols]` on the
/// weight's GPU (e.g. [`crate::ops::prune_stats::CudaInputStats::scaler_row`]).
pub fn wanda_scores(w: &Tensor, scaler_row: &CudaSlice<f64>) -> Result<Tensor> {
    let op = "wanda_scores";
    expect_float(op, w)?;
    let (rows, cols) = matrix_dims(op, w)?;
    let dev = cuda_device(w)?;
    check_scaler(op, dev, scaler_row, cols)?;
    with_compute_type!(w.dtype(), op, T => {
        let mut out = dev.alloc::<f32>(rows * cols)?;
        cuda::wanda::<T>(dev, w.read()?.cuda::<T>()?, scaler_row, out.slice_mut(), rows, cols)?;
        cuda_tensor(out, [rows, cols], w.device())
    })
}

/// RIA's `(|W_ij|/Σ_k|W_kj| + |W_ij|/Σ_k|W_ik|) · sqrt(scaler_row_j)^a` as F32 [rows, cols]
/// (a zero row or column sum contributes 0); `scaler_row` `[cols]` on the weight's GPU.
pub fn ria_scores(w: &Tensor, scaler_row: &CudaSlice<f64>, a: f64) -> Result<Tensor> {
    let op = "ria_scores";
    expect_float(op, w)?;
    let (rows, cols) = matrix_dims(op, w)?;
    let dev = cuda_device(w)?;
    check_scaler(op, dev, scaler_row, cols)?;
    with_compute_type!(w.dtype(), op, T => {
        let mut out = dev.alloc::<f32>(rows * cols)?;
        cuda::ria::<T>(dev, w.read()?.cuda::<T>()?, scaler_row, a, out.slice_mut(), rows, cols)?;
        cuda_tensor(out, [rows, cols], w.device())
    })
}

/// Prunes the `k` lowest of every row of CUDA F32 `scores` [rows, cols] (k ≤ cols): a U8
/// bitmask [rows, ceil(cols/8)], byte for byte [`cpu::prune_lowest_per_row`].
pub fn select_rows_lowest(scores: &Tensor, k: usize) -> Result<Tensor> {
    let op = "select_rows_lowest";
    let (rows, cols) = score_dims(op, scores)?;
    if k > cols {
        return Err(Error::invalid(format!("{op}: cannot prune {k} of {cols} scores per row")));
    }
    let dev = cuda_device(scores)?;
    let stride = cols.div_ceil(8);
    let mut mask = dev.alloc::<u8>(rows * stride)?;
    cuda::select_rows_lowest(dev, scores.read()?.cuda::<f32>()?, mask.slice_mut(), rows, cols, k)?;
    cuda_tensor(mask, [rows, stride], scores.device())
}

/// Prunes the M − N lowest of every group of M consecutive columns of CUDA F32 `scores`
/// [rows, cols] (M divides cols, 0 < N < M): a U8 bitmask [rows, ceil(cols/8)], byte for
/// byte [`cpu::prune_lowest_nm`].
pub fn select_nm(scores: &Tensor, n: usize, m: usize) -> Result<Tensor> {
    let op = "select_nm";
    let (rows, cols) = score_dims(op, scores)?;
    crate::sparse::check_nm(n, m, cols)?;
    let dev = cuda_device(scores)?;
    let stride = cols.div_ceil(8);
    let mut mask = dev.alloc::<u8>(rows * stride)?;
    cuda::select_nm(dev, scores.read()?.cuda::<f32>()?, mask.slice_mut(), rows, cols, n, m)?;
    cuda_tensor(mask, [rows, stride], scores.device())
}

/// Prunes the `k` lowest of all `len` elements of CUDA F32 `scores` (any shape, taken in
/// row-major order as one row; same order and ties as [`select_rows_lowest`]), returning a
/// U8 bitmask [1, ceil(len/8)]: `select_rows_lowest(scores as [1, len], k)` without the
/// reshape (SparseGPT selects over a whole [rows, block] slab this way). Needs k ≤ len.
pub fn select_flat_lowest(scores: &Tensor, k: usize) -> Result<Tensor> {
    let op = "select_flat_lowest";
    if scores.dtype() != DType::F32 {
        return Err(Error::DType { op, dtype: scores.dtype(), msg: "scores must be f32" });
    }
    let len = scores.elem_count();
    if len == 0 {
        return Err(Error::BadShape { op, shape: scores.shape().clone(), msg: "no scores".into() });
    }
    if k > len {
        return Err(Error::invalid(format!("{op}: cannot prune {k} of {len} scores")));
    }
    let dev = cuda_device(scores)?;
    let stride = len.div_ceil(8);
    let mut mask = dev.alloc::<u8>(stride)?;
    cuda::select_flat_lowest(dev, scores.read()?.cuda::<f32>()?, mask.slice_mut(), len, k)?;
    cuda_tensor(mask, [1, stride], scores.device())
}

/// A copy of the CUDA matrix `w` [rows, cols] (F32 or BF16) with zeros where the U8 bitmask
/// `mask` [rows, ceil(cols/8)] is 0.
pub fn apply_mask(w: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let op = "apply_mask";
    expect_float(op, w)?;
    let (rows, cols) = matrix_dims(op, w)?;
    let dev = cuda_device(w)?;
    check_mask(op, mask, w.device(), rows, cols)?;
    with_compute_type!(w.dtype(), op, T => {
        let mut out = dev.alloc::<T>(rows * cols)?;
        cuda::apply_mask::<T>(dev, w.read()?.cuda::<T>()?, mask.read()?.cuda::<u8>()?, out.slice_mut(), rows, cols)?;
        cuda_tensor(out, [rows, cols], w.device())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda_for_tests;
    use crate::sparse::BitMask;
    use crate::testing::{assert_close, assert_same_mask, random_f32, random_f64, tricky_scores};
    use crate::Device;

    #[test]
    fn cpu_tensors_and_bad_arguments_are_errors() {
        let cpu = Device::cpu();
        let s = Tensor::zeros([2, 8], DType::F32, &cpu).unwrap();
        assert!(select_rows_lowest(&s, 4).is_err(), "CPU scores");
        assert!(select_nm(&s, 2, 4).is_err(), "CPU scores");
        assert!(select_flat_lowest(&s, 3).is_err(), "CPU scores");
        assert!(magnitude_scores(&s).is_err(), "CPU weight");
        let mask = Tensor::zeros([2, 1], DType::U8, &cpu).unwrap();
        assert!(apply_mask(&s, &mask).is_err(), "CPU weight");
        assert!(select_rows_lowest(&Tensor::zeros([2, 8], DType::BF16, &cpu).unwrap(), 4).is_err());
        assert!(select_rows_lowest(&Tensor::zeros([16], DType::F32, &cpu).unwrap(), 4).is_err());
    }

    #[test]
    fn cuda_scores_match_cpu() {
        let Some(gpu) = cuda_for_tests("prune_select::cuda_scores_match_cpu") else { return };
        let Device::Cuda(dev) = &gpu else { panic!("cuda_for_tests gave a non-CUDA device") };
        let cpu = Device::cpu();
        for dtype in [DType::F32, DType::BF16] {
            for (rows, cols) in [(1, 1), (3, 7), (5, 33), (130, 37), (17, 1000), (2, 4099)] {
                let what = format!("scores {dtype} {rows}x{cols}");
                let mut wv = random_f32(rows * cols, 2.0, (rows * cols) as u64);
                // A zero column and a zero row: RIA's zero sums contribute 0.
                if cols > 2 && rows > 2 {
                    (0..rows).for_each(|r| wv[r * cols + 1] = 0.0);
                    (0..cols).for_each(|c| wv[2 * cols + c] = 0.0);
                }
                let w = Tensor::from_f32(wv, [rows, cols], dtype, &cpu).unwrap();
                let wh = w.to_f32_vec().unwrap();
                let wg = w.to_device(&gpu).unwrap();
                let scaler: Vec<f64> = random_f64(cols, 3.0, 7).iter().map(|v| v.abs()).collect();
                let scaler_g = dev.htod(&scaler).unwrap();

                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let got = magnitude_scores(&wg).unwrap().to_f32_vec().unwrap();
                assert_eq!(bits(&got), bits(&cpu::magnitude(&wh)), "{what} magnitude");
                let got = wanda_scores(&wg, scaler_g.slice()).unwrap().to_f32_vec().unwrap();
                assert_eq!(bits(&got), bits(&cpu::wanda(&wh, cols, &scaler)), "{what} wanda");
                for a in [0.5, 1.0] {
                    let got = ria_scores(&wg, scaler_g.slice(), a).unwrap().to_f32_vec().unwrap();
                    let want = cpu::ria(&wh, rows, cols, &scaler, a);
                    assert_close(&format!("{what} ria a={a}"), &got, &want, 1e-12, 1e-6);
                }
                if cols > 1 {
                    let short = dev.htod(&scaler[..cols - 1]).unwrap();
                    assert!(wanda_scores(&wg, short.slice()).is_err(), "{what}: short scaler_row");
                }
            }
        }
    }

    #[test]
    fn cuda_select_matches_cpu_bytes() {
        let Some(gpu) = cuda_for_tests("prune_select::cuda_select_matches_cpu_bytes") else { return };
        let shapes = [(3, 1), (5, 7), (13, 33), (4, 36), (9, 1000), (5, 4099), (3, 11008)];
        for (i, &(rows, cols)) in shapes.iter().enumerate() {
            let v = tricky_scores(rows * cols, 40 + i as u64);
            let sg = Tensor::from_vec(v.clone(), [rows, cols], &gpu).unwrap();
            let stride = cols.div_ceil(8);
            for k in [0.0, 0.3, 0.5, 0.7, 0.99].map(|f: f64| (cols as f64 * f).floor() as usize) {
                let what = format!("select_rows_lowest k {k} on {rows}x{cols}");
                let want = cpu::prune_lowest_per_row(&v, rows, cols, k);
                let got = select_rows_lowest(&sg, k).unwrap();
                assert_eq!(got.dims(), [rows, stride], "{what}");
                assert_same_mask(&what, &got.to_vec::<u8>().unwrap(), want.bytes(), stride);
            }
            for (n, m) in [(2, 4), (4, 8), (1, 4), (3, 8)] {
                let what = format!("select_nm {n}:{m} on {rows}x{cols}");
                match cpu::prune_lowest_nm(&v, rows, cols, n, m) {
                    Ok(want) => {
                        let got = select_nm(&sg, n, m).unwrap();
                        assert_eq!(got.dims(), [rows, stride], "{what}");
                        assert_same_mask(&what, &got.to_vec::<u8>().unwrap(), want.bytes(), stride);
                    }
                    Err(_) => assert!(select_nm(&sg, n, m).is_err(), "{what}: the CPU refuses it"),
                }
            }
        }
        // All equal, all NaN, and NaN tied with −∞: the order is the column index alone.
        for (name, fill) in [("equal", 0.5f32), ("nan", f32::NAN)] {
            let (rows, cols) = (3, 4099);
            let mut v = vec![fill; rows * cols];
            (0..cols).step_by(5).for_each(|c| v[cols + c] = f32::NEG_INFINITY);
            let sg = Tensor::from_vec(v.clone(), [rows, cols], &gpu).unwrap();
            for k in [cols / 2, cols * 99 / 100] {
                let want = cpu::prune_lowest_per_row(&v, rows, cols, k);
                let got = select_rows_lowest(&sg, k).unwrap().to_vec::<u8>().unwrap();
                assert_same_mask(&format!("select_rows_lowest k {k} of {name}"), &got, want.bytes(), cols.div_ceil(8));
            }
        }
        let sg = Tensor::zeros([2, 8], DType::F32, &gpu).unwrap();
        assert!(select_rows_lowest(&sg, 9).is_err());
        assert!(select_nm(&sg, 2, 3).is_err());
    }

    #[test]
    fn cuda_flat_select_matches_cpu_bytes() {
        let Some(gpu) = cuda_for_tests("prune_select::cuda_flat_select_matches_cpu_bytes") else { return };
        for (i, len) in [1usize, 7, 1000, 8193, 100_003, 2_000_001].into_iter().enumerate() {
            // Few distinct values: runs of equal keys cross the 8192-element chunks.
            let coarse: Vec<f32> = tricky_scores(len, 60 + i as u64).iter().map(|v| (v * 2.0).round()).collect();
            for (kind, v) in [("tricky", tricky_scores(len, 50 + i as u64)), ("coarse", coarse)] {
                let sg = Tensor::from_vec(v.clone(), [len], &gpu).unwrap();
                for k in [0, 1, len / 3, len / 2 + 1, len - 1, len] {
                    let what = format!("select_flat_lowest {kind} len {len} k {k}");
                    let want = cpu::prune_lowest_per_row(&v, 1, len, k);
                    let got = select_flat_lowest(&sg, k).unwrap();
                    assert_eq!(got.dims(), [1, len.div_ceil(8)], "{what}");
                    assert_same_mask(&what, &got.to_vec::<u8>().unwrap(), want.bytes(), len.div_ceil(8));
                }
                assert!(select_flat_lowest(&sg, len + 1).is_err());
            }
        }
        // The same mask as `select_rows_lowest` on one row.
        let len = 40_961;
        let v = tricky_scores(len, 70);
        let sg = Tensor::from_vec(v, [1, len], &gpu).unwrap();
        let k = len * 3 / 5;
        let by_rows = select_rows_lowest(&sg, k).unwrap().to_vec::<u8>().unwrap();
        let flat = select_flat_lowest(&sg, k).unwrap().to_vec::<u8>().unwrap();
        assert_same_mask("flat vs rows", &flat, &by_rows, len.div_ceil(8));
    }

    #[test]
    fn cuda_apply_mask_matches_cpu() {
        let Some(gpu) = cuda_for_tests("prune_select::cuda_apply_mask_matches_cpu") else { return };
        let cpu = Device::cpu();
        for dtype in [DType::F32, DType::BF16] {
            for (rows, cols) in [(1, 1), (3, 7), (5, 33), (7, 4099)] {
                let w = Tensor::from_f32(random_f32(rows * cols, 1.0, 80), [rows, cols], dtype, &cpu).unwrap();
                let scores = random_f32(rows * cols, 1.0, 81);
                let mask = BitMask::from_fn(rows, cols, |r, c| scores[r * cols + c] > 0.0);
                let mask_g = Tensor::from_vec(mask.bytes().to_vec(), [rows, cols.div_ceil(8)], &gpu).unwrap();
                let got = apply_mask(&w.to_device(&gpu).unwrap(), &mask_g).unwrap();
                assert_eq!((got.dims(), got.dtype()), ([rows, cols].as_slice(), dtype));
                let mut want = w.to_f32_vec().unwrap();
                mask.apply(&mut want).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.to_f32_vec().unwrap()), bits(&want), "apply_mask {dtype} {rows}x{cols}");
                let wrong = Tensor::zeros([rows, cols.div_ceil(8) + 1], DType::U8, &gpu).unwrap();
                assert!(apply_mask(&w.to_device(&gpu).unwrap(), &wrong).is_err());
            }
        }
    }
}
