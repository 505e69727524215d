//! SparseGPT's pruning step on the CPU, in f64 (Frantar & Alistarh 2023, following
//! IST-DASLab/sparsegpt `SparseGPT.fasterprune`): the CPU reference of the CUDA launchers
//! beside it. W: [rows, cols] (out × in), H: [cols, cols] = (2/n)·XᵀX.
//!
//! 1. Dead inputs (H_jj = 0): H_jj ← 1, W[:, j] ← 0.
//! 2. H += λ·mean(diag H)·I (λ = `percdamp`).
//! 3. U = upper Cholesky factor of H⁻¹ ([`crate::linalg::inverse_cholesky_upper`]).
//! 4. For column blocks [i1, i2) of `block_size`:
//!    - unstructured (`nm` = None): score W1²/diag(U1)² over the block, prune the
//!      ⌊numel·sparsity⌋ lowest (one selection for the whole block). Deviation, written
//!      down: the reference keeps every score ≤ the threshold (`tmp <= thresh`), which
//!      prunes more than ⌊numel·s⌋ on ties; we prune exactly ⌊numel·s⌋, ties by (row,
//!      column) order;
//!    - N:M (`nm` = Some((n, m))): at each column i with (i − i1) % M == 0, per row prune
//!      the M − N lowest scores among columns i..i+M (computed from the updated W1);
//!    - per column i: q = w with pruned entries 0; err = (w − q)/U_ii; W1[:, i:] −= err ⊗ U[i, i:];
//!    - after the block: W[:, i2:] −= Err1 · U[i1:i2, i2:].
//!
//! The kept weights are updated, not just masked: the result is a new W with exact zeros
//! where the returned mask prunes. Rows are independent given the masks, so the column
//! loop runs in parallel over rows.

use rayon::prelude::*;

use crate::linalg::{gemm_f64, inverse_cholesky_upper};
use crate::ops::prune_select::cpu::{prune_lowest_per_row, pruned_count};
use crate::sparse::BitMask;
use crate::{Error, Result};

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

/// Prunes `w` ([rows, cols], row-major, f64) in place using H (consumed), blocks of
/// `block_size` columns, damping `percdamp`: N:M when `nm` is `Some((n, m))`, else
/// ⌊numel·`sparsity`⌋ of each block ([`super::check_args`]); returns the mask (1 = kept).
#[allow(clippy::too_many_arguments)]
pub fn prune(
    w: &mut [f64],
    h: Vec<f64>,
    rows: usize,
    cols: usize,
    sparsity: f64,
    nm: Option<(usize, usize)>,
    block_size: usize,
    percdamp: f64,
) -> Result<BitMask> {
    super::check_args(cols, sparsity, nm, block_size)?;
    let u = prepare(w, h, rows, cols, percdamp)?;
    let mut mask = BitMask::all_kept(rows, cols);
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block_size).min(cols);
        let count = i2 - i1;
        // Block copy W1 [rows, count].
        let mut w1: Vec<f64> = (0..rows).flat_map(|r| w[r * cols + i1..r * cols + i2].iter().copied()).collect();
        let diag: Vec<f64> = (i1..i2).map(|i| u[i * cols + i]).collect();
        let block_mask = match nm {
            None => {
                let scores: Vec<f32> =
                    (0..rows * count).map(|k| (w1[k] * w1[k] / (diag[k % count] * diag[k % count])) as f32).collect();
                // One selection over the whole block: treat it as a single row.
                Some(prune_lowest_per_row(&scores, 1, rows * count, pruned_count(rows * count, sparsity)))
            }
            Some(_) => None,
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
                    if let Some((n, m)) = nm {
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
        (sparsity, nm): (f64, Option<(usize, usize)>),
        block_size: usize,
    ) -> Vec<bool> {
        let u = prepare(w, h.to_vec(), rows, cols, 0.01).unwrap();
        let mut kept = vec![true; rows * cols];
        for i in 0..cols {
            if i % block_size == 0 && nm.is_none() {
                let i2 = (i + block_size).min(cols);
                let count = i2 - i;
                let mut idx: Vec<(f64, usize, usize)> = (0..rows)
                    .flat_map(|r| (i..i2).map(move |c| (r, c)))
                    .map(|(r, c)| (((w[r * cols + c].powi(2)) / u[c * cols + c].powi(2)) as f32 as f64, r, c))
                    .collect();
                idx.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1 * count + a.2).cmp(&(b.1 * count + b.2))));
                for &(_, r, c) in &idx[..((rows * count) as f64 * sparsity).floor() as usize] {
                    kept[r * cols + c] = false;
                }
            }
            for r in 0..rows {
                if let Some((n, m)) = nm {
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
        for (rule, rows, cols, bs) in [
            ((0.5, None), 9, 40, 16),
            ((0.7, None), 5, 37, 8),
            ((0.0, Some((2, 4))), 6, 32, 8),
            ((0.0, Some((4, 8))), 3, 48, 16),
        ] {
            let pattern = format!("{rule:?}");
            let h = hessian(cols, 3 * cols, 5, &[3]);
            let w0 = random_f64(rows * cols, 1.0, 6);
            let mut fast = w0.clone();
            let mask = prune(&mut fast, h.clone(), rows, cols, rule.0, rule.1, bs, 0.01).unwrap();
            let mut slow = w0.clone();
            let kept = slow_reference(&mut slow, &h, rows, cols, rule, bs);
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
        let mask = prune(&mut w, h.clone(), rows, cols, 0.5, None, 32, 0.01).unwrap();
        for b in 0..2 {
            let kept: usize = (0..rows).map(|r| (b * 32..(b + 1) * 32).filter(|&c| mask.get(r, c)).count()).sum();
            assert_eq!(kept, rows * 32 / 2);
        }
        let mut w = random_f64(rows * cols, 1.0, 9);
        let mask = prune(&mut w, h, rows, cols, 0.0, Some((2, 4)), 128, 0.01).unwrap();
        assert!(prune(&mut w.clone(), hessian(cols, 200, 8, &[]), rows, cols, 0.0, Some((2, 4)), 30, 0.01).is_err());
        assert!((0..rows).all(|r| (0..cols).step_by(4).all(|g| (g..g + 4).filter(|&c| mask.get(r, c)).count() == 2)));
    }
}
