//! SparseGPT as a pruning method: its options and the mapping of a [`Pattern`] onto the
//! numbers `ops::sparsegpt` takes (the algorithm, on the CPU and on CUDA, and its
//! equations are there). W: [rows, cols] (out × in), H: [cols, cols] = (2/n)·XᵀX over the
//! calibration tokens.

use super::select::Pattern;
use crate::device::CudaDevice;
use crate::ops::sparsegpt as op;
use crate::sparse::BitMask;
use crate::Result;

/// SparseGPT hyper-parameters (reference defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseGptOptions {
    /// Columns per lazy-update block.
    pub block_size: usize,
    /// Dampening λ, relative to mean(diag H).
    pub percdamp: f64,
}

impl Default for SparseGptOptions {
    fn default() -> Self {
        SparseGptOptions { block_size: 128, percdamp: 0.01 }
    }
}

/// The op's numbers for `pattern`: (unstructured sparsity, N:M pair).
fn numbers(pattern: Pattern) -> (f64, Option<(usize, usize)>) {
    match pattern {
        Pattern::Unstructured(s) => (s, None),
        Pattern::NM { n, m } => (0.0, Some((n, m))),
    }
}

/// Prunes `w` ([rows, cols], row-major, f64) in place to `pattern` using H (consumed) on
/// the CPU; returns the mask (1 = kept). The op checks the numbers
/// ([`op::check_args`]: the pattern against the row, the block size).
pub fn prune(
    w: &mut [f64],
    h: Vec<f64>,
    rows: usize,
    cols: usize,
    pattern: Pattern,
    opts: SparseGptOptions,
) -> Result<BitMask> {
    let (s, nm) = numbers(pattern);
    op::cpu::prune(w, h, rows, cols, s, nm, opts.block_size, opts.percdamp)
}

/// [`prune`] on a CUDA device (W and H device slices; the mask comes back to the host).
pub fn prune_cuda(
    dev: &CudaDevice,
    w: &mut cudarc::driver::CudaSlice<f64>,
    h: &cudarc::driver::CudaSlice<f64>,
    rows: usize,
    cols: usize,
    pattern: Pattern,
    opts: SparseGptOptions,
) -> Result<BitMask> {
    let (s, nm) = numbers(pattern);
    op::prune(dev, w, h, rows, cols, s, nm, opts.block_size, opts.percdamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::gemm_f64;
    use crate::prune::select::select;
    use crate::testing::random_f64;

    #[test]
    fn reduces_reconstruction_error_versus_magnitude() {
        // ‖(W − Ŵ)X‖ should be smaller for SparseGPT than for plain magnitude pruning when
        // the inputs are correlated (as activations are): X = Z·R with a random mixing R.
        let (rows, cols, tokens) = (8, 48, 300);
        let z = random_f64(tokens * cols, 1.0, 11);
        let mix = random_f64(cols * cols, 1.0, 13);
        let mut x = vec![0f64; tokens * cols];
        gemm_f64(tokens, cols, cols, &mut x, cols, false, 1.0, &z, cols, false, &mix, cols, false);
        let mut h = vec![0f64; cols * cols];
        gemm_f64(cols, cols, tokens, &mut h, cols, false, 2.0 / tokens as f64, &x, cols, true, &x, cols, false);
        let w0 = random_f64(rows * cols, 1.0, 12);
        let err = |w: &[f64]| {
            let d: Vec<f64> = w.iter().zip(&w0).map(|(a, b)| a - b).collect();
            let mut y = vec![0f64; tokens * rows];
            gemm_f64(tokens, rows, cols, &mut y, rows, false, 1.0, &x, cols, false, &d, cols, true);
            y.iter().map(|v| v * v).sum::<f64>()
        };
        let mut sg = w0.clone();
        let sg_mask =
            prune(&mut sg, h.clone(), rows, cols, Pattern::Unstructured(0.5), SparseGptOptions::default()).unwrap();
        let mut sg_masked_only = w0.clone();
        sg_mask.apply(&mut sg_masked_only).unwrap();
        let scores: Vec<f32> = w0.iter().map(|v| v.abs() as f32).collect();
        let mag_mask = select(&scores, rows, cols, Pattern::Unstructured(0.5)).unwrap();
        let mut mag = w0.clone();
        mag_mask.apply(&mut mag).unwrap();
        let (e_sg, e_masked, e_mag) = (err(&sg), err(&sg_masked_only), err(&mag));
        // The OBS updates of the kept weights compensate for what was pruned...
        assert!(e_sg < 0.7 * e_masked, "update: {e_sg} vs the same mask without updates {e_masked}");
        // ...enough to beat magnitude pruning.
        assert!(e_sg < 0.95 * e_mag, "sparsegpt {e_sg} vs magnitude {e_mag}");
    }
}
