//! AdamW reference over n trained values (PyTorch's `torch.optim.AdamW` update, f32):
//! `g = grad·gscale; m = b1·m + (1−b1)·g; v = b2·v + (1−b2)·g²;
//!  p = p·(1 − lr·wd) − (lr/bc1)·m / (√v/√bc2 + eps)` with bc_i = 1 − b_iᵗ.
//! `sum_squares`: Σ x² in f64.
//! `clip_scale`: the global norm of gradients summed over `micro` micro-batches,
//! norm = √(Σ‖g‖²) / micro, and the factor of a step clipped to `max_norm`,
//! min(max_norm / (norm + 1e-6), 1) / micro (1 / micro without clipping); no factor (the step
//! is skipped) when the norm is not finite.

use super::Hyper;

/// One update of `master`, `m`, `v` (all n long) from `grad` (n long, already widened).
pub fn adamw(master: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], h: &Hyper) {
    let (bc1, sqrt_bc2) = h.bias_corrections();
    for (((p, m), v), &g) in master.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(grad) {
        let g = g * h.grad_scale;
        *m = h.beta1 * *m + (1.0 - h.beta1) * g;
        *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
        *p *= 1.0 - h.lr * h.weight_decay;
        *p -= (h.lr / bc1) * *m / (v.sqrt() / sqrt_bc2 + h.eps);
    }
}

/// Σ x² accumulated in f64.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// (global norm, gradient factor) of a step from the summed squares of its gradients (see the
/// module docs); the factor is None when the norm is not finite.
pub fn clip_scale(sum_squares: f64, micro: u32, max_norm: Option<f32>) -> (f64, Option<f32>) {
    let micro = f64::from(micro);
    let norm = sum_squares.sqrt() / micro;
    if !norm.is_finite() {
        return (norm, None);
    }
    let clip = max_norm.map_or(1.0, |m| (f64::from(m) / (norm + 1e-6)).min(1.0));
    (norm, Some((clip / micro) as f32))
}
