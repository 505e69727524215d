//! Cross-entropy reference (fused log-softmax + NLL), all statistics in f64.
//! logits, dlogits: `[rows, vocab]` row-major; targets, lse: `[rows]`; `t = targets[r]`.
//! ```text
//! lse[r]  = log Σ_j exp(logits[r, j])            (max-subtracted)
//! loss[r] = lse[r] − logits[r, t]                for t ≠ IGNORE_INDEX
//! dlogits[r, j] = scale · (exp(logits[r, j] − lse[r]) − [j = t]),  0 for ignored rows
//! ```
//! where the caller passes scale = g / count (g the output gradient, count the rows kept).
//! Targets must be < vocab or IGNORE_INDEX (checked by `ops::cross_entropy`).

use rayon::prelude::*;

use super::IGNORE_INDEX;
use crate::ops::Real;

/// Writes every row's logsumexp into `lse` (ignored rows too) and returns
/// (Σ loss over the rows whose target is not ignored, number of such rows).
/// Rows run in parallel; their losses are summed in row order (deterministic).
pub fn forward<F: Real>(logits: &[F], targets: &[u32], vocab: usize, lse: &mut [F]) -> (f64, usize) {
    let losses: Vec<Option<f64>> = logits
        .par_chunks_exact(vocab)
        .zip(targets.par_iter())
        .zip(lse.par_iter_mut())
        .map(|((row, &target), row_lse)| {
            let max = row.iter().map(|v| v.to_f64()).fold(f64::NEG_INFINITY, f64::max);
            let sum_exp: f64 = row.iter().map(|v| (v.to_f64() - max).exp()).sum();
            let lse_f64 = max + sum_exp.ln();
            *row_lse = F::from_f64(lse_f64);
            (target != IGNORE_INDEX).then(|| lse_f64 - row[target as usize].to_f64())
        })
        .collect();
    losses.iter().flatten().fold((0.0, 0), |(s, n), l| (s + l, n + 1))
}

/// Overwrites `dlogits` with `scale · (softmax − onehot)` per counted row, zero for ignored
/// rows; softmax is recomputed from the saved `lse`.
pub fn backward<F: Real>(logits: &[F], targets: &[u32], lse: &[F], scale: f64, vocab: usize, dlogits: &mut [F]) {
    let rows = logits.par_chunks_exact(vocab).zip(dlogits.par_chunks_exact_mut(vocab));
    rows.zip(targets.par_iter()).zip(lse.par_iter()).for_each(|(((row, drow), &target), &row_lse)| {
        if target == IGNORE_INDEX {
            drow.fill(F::default());
            return;
        }
        for (j, (d, &x)) in drow.iter_mut().zip(row).enumerate() {
            let p = (x.to_f64() - row_lse.to_f64()).exp();
            let onehot = if j == target as usize { 1.0 } else { 0.0 };
            *d = F::from_f64(scale * (p - onehot));
        }
    });
}
