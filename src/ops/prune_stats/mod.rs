//! Calibration statistics of a linear's input on the GPU, in f64: [`CudaInputStats`] is the
//! device twin of [`InputStats`] and accumulates exactly what its
//! `accumulate` does. For x [S, T, in] (or [T, in], one sequence):
//! - `sq_norms[j]    += Σ_t x_tj²`,
//! - `sums[j]        += Σ_t x_tj`,
//! - `seq_var_sum[j] += Σ_seq max(E_t[x_tj²] − E_t[x_tj]², 0)` (population variance within
//!   each sequence),
//! - `xtx            += XᵀX` [in, in] (optional; X = x as [S·T, in]), by cuBLAS DGEMM.
//!
//! CPU reference: [`InputStats::accumulate`] (`cpu.rs`).
//! Column sums are formed per chunk of [`cuda::CHUNK_TOKENS`] tokens of a sequence and the
//! chunks added in order (deterministic); with T ≤ 128 the order, and so every bit, is the
//! reference's. XᵀX differs from the reference by DGEMM's summation order only.

mod cpu;
pub mod cuda;

pub use cpu::InputStats;

use cudarc::driver::CudaSlice;

use crate::device::{CudaBuffer, CudaDevice};
use crate::ops::{cuda_device, expect_float};
use crate::{with_compute_type, Error, Result, Tensor};

/// Statistics of one linear input over the calibration tokens, held on a GPU in f64.
pub struct CudaInputStats {
    dev: CudaDevice,
    dim: usize,
    tokens: usize,
    sequences: usize,
    /// `[in]`: Σ_t x_tj².
    sq_norms: CudaBuffer<f64>,
    /// `[in]`: Σ_t x_tj.
    sums: CudaBuffer<f64>,
    /// `[in]`: Σ over sequences of the within-sequence population variance.
    seq_var_sum: CudaBuffer<f64>,
    /// [in, in] row-major (symmetric): Σ_t x_t x_tᵀ, when requested.
    xtx: Option<CudaBuffer<f64>>,
}

impl CudaInputStats {
    /// Zeroed statistics for inputs of width `dim` (> 0), with XᵀX when `with_xtx`.
    pub fn new(dev: &CudaDevice, dim: usize, with_xtx: bool) -> Result<Self> {
        if dim == 0 {
            return Err(Error::invalid("calibration statistics need a non-zero input width"));
        }
        let xtx_len = dim.checked_mul(dim).ok_or_else(|| Error::invalid(format!("XᵀX of width {dim} is too large")))?;
        Ok(CudaInputStats {
            dev: dev.clone(),
            dim,
            tokens: 0,
            sequences: 0,
            sq_norms: dev.alloc_zeros(dim)?,
            sums: dev.alloc_zeros(dim)?,
            seq_var_sum: dev.alloc_zeros(dim)?,
            xtx: if with_xtx { Some(dev.alloc_zeros(xtx_len)?) } else { None },
        })
    }

    /// Adds the tokens of `x`: [sequences, T, in] (or [T, in], one sequence), F32 or BF16,
    /// on this statistics' GPU. Sequences are the first dimension when the rank is ≥ 3, as
    /// in the CPU reference.
    pub fn accumulate(&mut self, x: &Tensor) -> Result<()> {
        expect_float("prune_stats", x)?;
        if !cuda_device(x)?.same(&self.dev) {
            return Err(Error::DeviceMismatch {
                op: "prune_stats",
                lhs: format!("cuda:{}", self.dev.ordinal()),
                rhs: x.device().label(),
            });
        }
        let dim = x.shape().last_dim();
        if dim != self.dim {
            return Err(Error::invalid(format!("calibration input width {dim}, expected {}", self.dim)));
        }
        let rows = x.shape().rows();
        let seqs = if x.shape().rank() >= 3 { x.dims()[0] } else { 1 };
        if rows == 0 {
            return Err(Error::BadShape {
                op: "prune_stats",
                shape: x.shape().clone(),
                msg: "calibration input has no tokens".into(),
            });
        }
        let seq_len = rows / seqs;
        let dev = &self.dev;
        with_compute_type!(x.dtype(), "prune_stats", T => {
            let storage = x.read()?;
            let xs = storage.cuda::<T>()?;
            cuda::accumulate_columns::<T>(
                dev,
                xs,
                self.sq_norms.slice_mut(),
                self.sums.slice_mut(),
                self.seq_var_sum.slice_mut(),
                seqs,
                seq_len,
                dim,
            )?;
            if let Some(xtx) = self.xtx.as_mut() {
                cuda::accumulate_xtx::<T>(dev, xs, xtx.slice_mut(), rows, dim)?;
            }
            Ok::<(), Error>(())
        })?;
        self.sequences += seqs;
        self.tokens += rows;
        Ok(())
    }

    /// Input width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens seen.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Sequences seen.
    pub fn sequences(&self) -> usize {
        self.sequences
    }

    /// Σ_t x_tj², `[in]`.
    pub fn sq_norms(&self) -> &CudaSlice<f64> {
        self.sq_norms.slice()
    }

    /// Σ_t x_tj, `[in]`.
    pub fn sums(&self) -> &CudaSlice<f64> {
        self.sums.slice()
    }

    /// Σ over sequences of the within-sequence variance of x_j, `[in]`.
    pub fn seq_var_sum(&self) -> &CudaSlice<f64> {
        self.seq_var_sum.slice()
    }

    /// Σ_t x_t x_tᵀ, [in, in] row-major, when collected.
    pub fn xtx(&self) -> Option<&CudaSlice<f64>> {
        self.xtx.as_ref().map(|b| b.slice())
    }

    /// Wanda's `scaler_row_j = Σ_t x_tj² / max(sequences, 1)` on the GPU, `[in]`; the same
    /// values as [`InputStats::scaler_row`].
    pub fn scaler_row(&self) -> Result<CudaBuffer<f64>> {
        let mut out = self.dev.alloc::<f64>(self.dim)?;
        cuda::scaler_row(&self.dev, self.sq_norms.slice(), out.slice_mut(), self.sequences.max(1) as f64, self.dim)?;
        Ok(out)
    }

    /// A host copy, as the CPU reference would hold it.
    pub fn to_host(&self) -> Result<InputStats> {
        Ok(InputStats {
            tokens: self.tokens,
            sequences: self.sequences,
            sq_norms: self.dev.dtoh(self.sq_norms.slice())?,
            sums: self.dev.dtoh(self.sums.slice())?,
            seq_var_sum: self.dev.dtoh(self.seq_var_sum.slice())?,
            xtx: self.xtx.as_ref().map(|b| self.dev.dtoh(b.slice())).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close_f64, random_f32};
    use crate::{device::cuda_for_tests, DType, Device};

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("prune_stats::cuda_matches_cpu") else { return };
        let Device::Cuda(dev) = &gpu else { panic!("cuda_for_tests gave a non-CUDA device") };
        let cpu = Device::cpu();
        let mut seed = 100;
        for dtype in [DType::F32, DType::BF16] {
            // T = 300 spans three chunks of CHUNK_TOKENS.
            for (seqs, t, dim) in [(1, 7, 5), (3, 65, 33), (3, 7, 129), (1, 65, 129), (3, 300, 33), (1, 300, 5)] {
                let what = format!("prune_stats {dtype} S={seqs} T={t} in={dim}");
                let mut want = InputStats::zeros(dim, true);
                let mut got = CudaInputStats::new(dev, dim, true).unwrap();
                for call in 0..3 {
                    seed += 1;
                    // An offset mean makes the variance differ from E[x²].
                    let v: Vec<f32> = random_f32(seqs * t * dim, 1.0, seed).iter().map(|a| a + 0.25).collect();
                    // One call as [T, in] when S = 1, to cover the rank-2 form.
                    let x = if seqs == 1 && call == 1 {
                        Tensor::from_f32(v, [t, dim], dtype, &cpu).unwrap()
                    } else {
                        Tensor::from_f32(v, [seqs, t, dim], dtype, &cpu).unwrap()
                    };
                    want.accumulate(&x).unwrap();
                    got.accumulate(&x.to_device(&gpu).unwrap()).unwrap();
                }
                let host = got.to_host().unwrap();
                assert_eq!((host.tokens, host.sequences), (want.tokens, want.sequences), "{what} counters");
                assert_close_f64(&format!("{what} sq_norms"), &host.sq_norms, &want.sq_norms, 1e-13, 1e-12);
                assert_close_f64(&format!("{what} sums"), &host.sums, &want.sums, 1e-13, 1e-12);
                assert_close_f64(&format!("{what} seq_var_sum"), &host.seq_var_sum, &want.seq_var_sum, 1e-13, 1e-12);
                if t <= cuda::CHUNK_TOKENS {
                    // One chunk per sequence: the reference's summation order, bit for bit.
                    assert_eq!(host.sq_norms, want.sq_norms, "{what} sq_norms bits");
                    assert_eq!(host.sums, want.sums, "{what} sums bits");
                    assert_eq!(host.seq_var_sum, want.seq_var_sum, "{what} seq_var_sum bits");
                }
                // DGEMM sums in another order: |error| ≲ tokens·ε·max|x|².
                let xtx_atol = 1e-13 * want.tokens as f64;
                assert_close_f64(
                    &format!("{what} xtx"),
                    host.xtx.as_ref().unwrap(),
                    want.xtx.as_ref().unwrap(),
                    xtx_atol,
                    1e-12,
                );
                let scaler = dev.dtoh(got.scaler_row().unwrap().slice()).unwrap();
                assert_eq!(scaler, host.scaler_row(), "{what} scaler_row");
            }
        }
    }

    #[test]
    fn cuda_without_xtx_and_bad_inputs() {
        let Some(gpu) = cuda_for_tests("prune_stats::cuda_without_xtx_and_bad_inputs") else { return };
        let Device::Cuda(dev) = &gpu else { panic!("cuda_for_tests gave a non-CUDA device") };
        let mut s = CudaInputStats::new(dev, 6, false).unwrap();
        let x = Tensor::from_f32(random_f32(2 * 4 * 6, 1.0, 9), [2, 4, 6], DType::F32, &gpu).unwrap();
        s.accumulate(&x).unwrap();
        let host = s.to_host().unwrap();
        assert!(host.xtx.is_none() && s.xtx().is_none());
        assert_eq!((host.tokens, host.sequences, s.dim()), (8, 2, 6));
        let wrong_width = Tensor::zeros([4, 5], DType::F32, &gpu).unwrap();
        assert!(s.accumulate(&wrong_width).is_err());
        let on_cpu = Tensor::zeros([4, 6], DType::F32, &Device::cpu()).unwrap();
        assert!(s.accumulate(&on_cpu).is_err());
        let ids = Tensor::zeros([4, 6], DType::U32, &gpu).unwrap();
        assert!(s.accumulate(&ids).is_err());
        let empty = Tensor::zeros([0, 4, 6], DType::F32, &gpu);
        if let Ok(empty) = empty {
            assert!(s.accumulate(&empty).is_err());
        }
        assert!(CudaInputStats::new(dev, 0, true).is_err());
        assert_eq!((s.tokens(), s.sequences()), (8, 2), "failed calls change nothing");
    }
}
