//! SparseGPT (Frantar & Alistarh 2023), following IST-DASLab/sparsegpt `sparsegpt.py`
//! (`SparseGPT.fasterprune`), in f64 on the CPU. W: [rows, cols] (out × in), H: [cols, cols]
//! = (2/n)·XᵀX over the calibration tokens.
//!
//! 1. Dead inputs (H_jj = 0): H_jj ← 1, W[:, j] ← 0.
//! 2. H += λ·mean(diag H)·I (λ = `percdamp`, 0.01).
//! 3. U = upper Cholesky factor of H⁻¹ ([`super::linalg::inverse_cholesky_upper`]).
//! 4. For column blocks [i1, i2) of `block_size` (128):
//!    - unstructured: score W1²/diag(U1)² over the block, prune the ⌊numel·s⌋ lowest (one
//!      selection for the whole block). Deviation, written down: the reference keeps every
//!      score ≤ the threshold (`tmp <= thresh`), which prunes more than ⌊numel·s⌋ on ties;
//!      we prune exactly ⌊numel·s⌋, ties by (row, column) order;
//!    - N:M: at each column i with (i − i1) % M == 0, per row prune the M − N lowest
//!      scores among columns i..i+M (computed from the updated W1);
//!    - per column i: q = w with pruned entries 0; err = (w − q)/U_ii; W1[:, i:] −= err ⊗ U[i, i:];
//!    - after the block: W[:, i2:] −= Err1 · U[i1:i2, i2:].
//!
//! The kept weights are updated, not just masked: the result is a new W with exact zeros
//! where the returned mask prunes. Rows are independent given the masks, so the column
//! loop runs in parallel over rows.

use rayon::prelude::*;

use super::select::{select, Pattern};
use crate::linalg::{gemm_f64, inverse_cholesky_upper};
use crate::sparse::BitMask;
use crate::{Error, Result};

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

/// Checks a pattern and options for a weight of `cols` inputs (shared by the CPU and GPU
/// versions): the pattern fits the row, the block size is positive and a multiple of M.
pub fn check_options(cols: usize, pattern: Pattern, opts: SparseGptOptions) -> Result<()> {
    pattern.check(cols)?;
    if opts.block_size == 0 {
        return Err(Error::invalid("sparsegpt: block size must be positive"));
    }
    if let Pattern::NM { m, .. } = pattern {
        if opts.block_size % m != 0 {
            return Err(Error::invalid(format!(
                "sparsegpt: block size {} is not a multiple of M = {m}",
                opts.block_size
            )));
        }
    }
    Ok(())
}

/// Steps 1–3: zero dead columns of `w`, damp `h`, and return U (upper Cholesky of H⁻¹).
/// `h` is consumed (damped and factored in place: no copy of a [cols, cols] matrix).
pub fn prepare(w: &mut [f64], mut h: Vec<f64>, rows: usize, cols: usize, percdamp: f64) -> Result<Vec<f64>> {
    if w.len() != rows * cols || h.len() != cols * cols {
        return Err(Error::invalid(format!(
            "sparsegpt: W has {} values for {rows}x{cols}, H has {} for {cols}x{cols}",
            w.len(),
            h.len()
        )));
    }
    for j in 0..cols {
        if h[j * cols + j] == 0.0 {
            h[j * cols + j] = 1.0;
            for r in 0..rows {
                w[r * cols + j] = 0.0;
            }
        }
    }
    let mean_diag = (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
    let damp = percdamp * mean_diag;
    for j in 0..cols {
        h[j * cols + j] += damp;
    }
    inverse_cholesky_upper(h, cols)
}

/// Prunes `w` ([rows, cols], row-major, f64) in place to `pattern` using H (consumed);
/// returns the mask (1 = kept).
pub fn prune(
    w: &mut [f64],
    h: Vec<f64>,
    rows: usize,
    cols: usize,
    pattern: Pattern,
    opts: SparseGptOptions,
) -> Result<BitMask> {
    check_options(cols, pattern, opts)?;
    let u = prepare(w, h, rows, cols, opts.percdamp)?;
    let mut mask = BitMask::all_kept(rows, cols);
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + opts.block_size).min(cols);
        let count = i2 - i1;
        // Block copy W1 [rows, count].
        let mut w1: Vec<f64> = (0..rows).flat_map(|r| w[r * cols + i1..r * cols + i2].iter().copied()).collect();
        let diag: Vec<f64> = (i1..i2).map(|i| u[i * cols + i]).collect();
        let block_mask = match pattern {
            Pattern::Unstructured(s) => {
                let scores: Vec<f32> =
                    (0..rows * count).map(|k| (w1[k] * w1[k] / (diag[k % count] * diag[k % count])) as f32).collect();
                // One selection over the whole block: treat it as a single row.
                let flat = select(&scores, 1, rows * count, Pattern::Unstructured(s))?;
                Some(flat)
            }
            Pattern::NM { .. } => None,
        };
        let mut err1 = vec![0f64; rows * count];
        let u_block: Vec<f64> = (i1..i2).flat_map(|i| u[i * cols + i1..i * cols + i2].iter().copied()).collect();
        let row_masks: Vec<Vec<bool>> = w1
            .par_chunks_mut(count)
            .zip(err1.par_chunks_mut(count))
            .enumerate()
            .map(|(r, (row, err))| {
                let mut kept = vec![true; count];
                if let Some(flat) = &block_mask {
                    for (i, k) in kept.iter_mut().enumerate() {
                        *k = flat.get(0, r * count + i);
                    }
                }
                for i in 0..count {
                    if let Pattern::NM { n, m } = pattern {
                        if i % m == 0 {
                            let mut idx: Vec<usize> = (i..i + m).collect();
                            let score = |j: usize| row[j] * row[j] / (diag[j] * diag[j]);
                            idx.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)));
                            for &j in &idx[..m - n] {
                                kept[j] = false;
                            }
                        }
                    }
                    let wv = row[i];
                    let q = if kept[i] { wv } else { 0.0 };
                    let e = (wv - q) / diag[i];
                    row[i] = q;
                    for j in i + 1..count {
                        row[j] -= e * u_block[i * count + j];
                    }
                    err[i] = e;
                }
                kept
            })
            .collect();
        for r in 0..rows {
            w[r * cols + i1..r * cols + i2].copy_from_slice(&w1[r * count..(r + 1) * count]);
            for (i, &k) in row_masks[r].iter().enumerate() {
                if !k {
                    mask.set(r, i1 + i, false);
                }
            }
        }
        // Lazy update of the columns after the block: W[:, i2:] −= Err1 · U[i1:i2, i2:].
        let rest = cols - i2;
        if rest > 0 {
            gemm_f64(
                rows,
                rest,
                count,
                &mut w[i2..],
                cols,
                true,
                -1.0,
                &err1,
                count,
                false,
                &u[i1 * cols + i2..],
                cols,
                false,
            );
        }
        i1 = i2;
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close_f64, random_f64};

    /// The same equations column by column with the full rank-1 update of every later
    /// column (no lazy blocks); masks are chosen at the same points (block starts for
    /// unstructured, every M columns for N:M) from the then-current W.
    fn slow_reference(
        w: &mut [f64],
        h: &[f64],
        rows: usize,
        cols: usize,
        pattern: Pattern,
        opts: SparseGptOptions,
    ) -> Vec<bool> {
        let u = prepare(w, h.to_vec(), rows, cols, opts.percdamp).unwrap();
        let mut kept = vec![true; rows * cols];
        for i in 0..cols {
            if i % opts.block_size == 0 {
                if let Pattern::Unstructured(s) = pattern {
                    let i2 = (i + opts.block_size).min(cols);
                    let count = i2 - i;
                    let mut idx: Vec<(f64, usize, usize)> = (0..rows)
                        .flat_map(|r| (i..i2).map(move |c| (r, c)))
                        .map(|(r, c)| (((w[r * cols + c].powi(2)) / u[c * cols + c].powi(2)) as f32 as f64, r, c))
                        .collect();
                    idx.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1 * count + a.2).cmp(&(b.1 * count + b.2))));
                    for &(_, r, c) in &idx[..((rows * count) as f64 * s).floor() as usize] {
                        kept[r * cols + c] = false;
                    }
                }
            }
            for r in 0..rows {
                if let Pattern::NM { n, m } = pattern {
                    if i % m == 0 {
                        let mut idx: Vec<usize> = (i..i + m).collect();
                        let score = |j: usize| w[r * cols + j].powi(2) / u[j * cols + j].powi(2);
                        idx.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)));
                        for &j in &idx[..m - n] {
                            kept[r * cols + j] = false;
                        }
                    }
                }
                let wv = w[r * cols + i];
                let q = if kept[r * cols + i] { wv } else { 0.0 };
                let e = (wv - q) / u[i * cols + i];
                w[r * cols + i] = q;
                for j in i + 1..cols {
                    w[r * cols + j] -= e * u[i * cols + j];
                }
            }
        }
        kept
    }

    fn hessian(cols: usize, tokens: usize, seed: u64, dead: &[usize]) -> Vec<f64> {
        let mut x = random_f64(tokens * cols, 1.0, seed);
        for t in 0..tokens {
            for &d in dead {
                x[t * cols + d] = 0.0;
            }
        }
        let mut h = vec![0f64; cols * cols];
        gemm_f64(cols, cols, tokens, &mut h, cols, false, 2.0 / tokens as f64, &x, cols, true, &x, cols, false);
        h
    }

    #[test]
    fn blocked_equals_column_by_column() {
        for (pattern, rows, cols, bs) in [
            (Pattern::Unstructured(0.5), 9, 40, 16),
            (Pattern::Unstructured(0.7), 5, 37, 8),
            (Pattern::NM { n: 2, m: 4 }, 6, 32, 8),
            (Pattern::NM { n: 4, m: 8 }, 3, 48, 16),
        ] {
            let opts = SparseGptOptions { block_size: bs, percdamp: 0.01 };
            let h = hessian(cols, 3 * cols, 5, &[3]);
            let w0 = random_f64(rows * cols, 1.0, 6);
            let mut fast = w0.clone();
            let mask = prune(&mut fast, h.clone(), rows, cols, pattern, opts).unwrap();
            let mut slow = w0.clone();
            let kept = slow_reference(&mut slow, &h, rows, cols, pattern, opts);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(mask.get(r, c), kept[r * cols + c], "{pattern}: mask differs at ({r}, {c})");
                }
            }
            assert_close_f64(&format!("{pattern} weights"), &fast, &slow, 1e-12, 1e-10);
            // Pruned entries are exact zeros; the dead input column is pruned everywhere.
            assert!((0..rows * cols).all(|k| mask.get(k / cols, k % cols) || fast[k] == 0.0));
            assert!((0..rows).all(|r| fast[r * cols + 3] == 0.0));
        }
    }

    #[test]
    fn sparsity_is_exact_per_block_and_per_group() {
        let (rows, cols) = (12, 64);
        let h = hessian(cols, 200, 8, &[]);
        let mut w = random_f64(rows * cols, 1.0, 9);
        let mask = prune(
            &mut w,
            h.clone(),
            rows,
            cols,
            Pattern::Unstructured(0.5),
            SparseGptOptions { block_size: 32, percdamp: 0.01 },
        )
        .unwrap();
        for b in 0..2 {
            let kept: usize = (0..rows).map(|r| (b * 32..(b + 1) * 32).filter(|&c| mask.get(r, c)).count()).sum();
            assert_eq!(kept, rows * 32 / 2);
        }
        let mut w = random_f64(rows * cols, 1.0, 9);
        let mask = prune(&mut w, h, rows, cols, Pattern::NM { n: 2, m: 4 }, SparseGptOptions::default()).unwrap();
        assert!((0..rows).all(|r| (0..cols).step_by(4).all(|g| (g..g + 4).filter(|&c| mask.get(r, c)).count() == 2)));
    }

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
