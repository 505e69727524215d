//! Calibration statistics of a linear's input on the host, in f64: the CPU reference of
//! [`super::CudaInputStats`]. For x [S, T, in] (or [T, in], one sequence), [`InputStats::accumulate`] adds
//! - `sq_norms[j]    += Σ_t x_tj²`,
//! - `sums[j]        += Σ_t x_tj`,
//! - `seq_var_sum[j] += Σ_seq max(E_t[x_tj²] − E_t[x_tj]², 0)` (population variance within
//!   each sequence),
//! - `xtx            += XᵀX` [in, in] (optional; X = x as [S·T, in]),
//!
//! and counts tokens and sequences; [`InputStats::hessian`] is H = (2/tokens)·XᵀX [in, in].

use crate::linalg::gemm_f64;
use crate::{Error, Result, Tensor};

/// Statistics of one linear input over the calibration tokens.
#[derive(Clone, Debug)]
pub struct InputStats {
    /// Tokens seen.
    pub tokens: usize,
    /// Sequences seen.
    pub sequences: usize,
    /// Σ_t X_tj².
    pub sq_norms: Vec<f64>,
    /// Σ_t X_tj.
    pub sums: Vec<f64>,
    /// Σ over sequences of the within-sequence population variance of X_j.
    pub seq_var_sum: Vec<f64>,
    /// Σ_t x_t x_tᵀ, [in, in] row-major, when requested.
    pub xtx: Option<Vec<f64>>,
}

impl InputStats {
    /// Empty statistics for an input of width `dim`.
    pub fn zeros(dim: usize, with_xtx: bool) -> Self {
        InputStats {
            tokens: 0,
            sequences: 0,
            sq_norms: vec![0.0; dim],
            sums: vec![0.0; dim],
            seq_var_sum: vec![0.0; dim],
            xtx: with_xtx.then(|| vec![0.0; dim * dim]),
        }
    }

    /// Input width.
    pub fn dim(&self) -> usize {
        self.sq_norms.len()
    }

    /// Wanda's `scaler_row_j = Σ_t x_tj² / max(sequences, 1)`.
    pub fn scaler_row(&self) -> Vec<f64> {
        self.sq_norms.iter().map(|v| v / self.sequences.max(1) as f64).collect()
    }

    /// ‖X_j‖₂ per column.
    pub fn col_norms(&self) -> Vec<f64> {
        self.sq_norms.iter().map(|v| v.sqrt()).collect()
    }

    /// SparseGPT's H = (2/n)·XᵀX.
    pub fn hessian(&self) -> Result<Vec<f64>> {
        let scale = self.hessian_scale();
        Ok(self.xtx.as_ref().ok_or_else(no_xtx)?.iter().map(|v| v * scale).collect())
    }

    /// [`InputStats::hessian`] scaled in place in the XᵀX buffer (no [in, in] copy), for
    /// the last linear that reads this input.
    pub fn into_hessian(self) -> Result<Vec<f64>> {
        let scale = self.hessian_scale();
        let mut xtx = self.xtx.ok_or_else(no_xtx)?;
        xtx.iter_mut().for_each(|v| *v *= scale);
        Ok(xtx)
    }

    /// H's factor 2/n over the tokens seen.
    fn hessian_scale(&self) -> f64 {
        2.0 / self.tokens.max(1) as f64
    }

    /// Adds the tokens of `x`: [sequences, T, in] (or [T, in], one sequence).
    pub fn accumulate(&mut self, x: &Tensor) -> Result<()> {
        let dim = x.shape().last_dim();
        if dim != self.dim() {
            return Err(Error::invalid(format!("calibration input width {dim}, expected {}", self.dim())));
        }
        let rows = x.shape().rows();
        let seqs = if x.shape().rank() >= 3 { x.dims()[0] } else { 1 };
        if rows == 0 || seqs == 0 {
            return Err(Error::invalid(format!("calibration input {} has no tokens", x.shape())));
        }
        let v = x.to_f32_vec()?;
        let per_seq = rows / seqs.max(1);
        let (mut s1, mut s2) = (vec![0f64; dim], vec![0f64; dim]);
        for seq in v.chunks_exact(per_seq * dim) {
            s1.iter_mut().for_each(|a| *a = 0.0);
            s2.iter_mut().for_each(|a| *a = 0.0);
            for row in seq.chunks_exact(dim) {
                for (j, &a) in row.iter().enumerate() {
                    let a = a as f64;
                    s1[j] += a;
                    s2[j] += a * a;
                }
            }
            let t = per_seq as f64;
            for j in 0..dim {
                self.sq_norms[j] += s2[j];
                self.sums[j] += s1[j];
                let mean = s1[j] / t;
                self.seq_var_sum[j] += (s2[j] / t - mean * mean).max(0.0);
            }
        }
        self.sequences += seqs;
        if let Some(xtx) = self.xtx.as_mut() {
            let x64: Vec<f64> = v.iter().map(|&a| a as f64).collect();
            gemm_f64(dim, dim, rows, xtx, dim, true, 1.0, &x64, dim, true, &x64, dim, false);
        }
        self.tokens += rows;
        Ok(())
    }
}

fn no_xtx() -> Error {
    Error::invalid("calibration collected no XᵀX")
}
