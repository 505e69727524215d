//! Trained sparse linear, the readable reference: the weight as a dense [out, in] matrix
//! W⊙M with its mask `keep` [out·in], x [t, in], f64 sums.
//!   y = x·(W⊙M)ᵀ          [t, out]
//!   dx = dy·(W⊙M)         [t, in]
//!   dW = M⊙(dyᵀ·x)        [out, in]; the kept values' gradient is dW at the kept positions

use crate::ops::Real;

/// Sizes of one sparse linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Rows of x (tokens).
    pub tokens: usize,
    /// Input features.
    pub input: usize,
    /// Output features.
    pub output: usize,
}

/// y = x·Wᵀ, [t, out] (W already masked).
pub fn forward<F: Real>(x: &[F], w: &[F], d: Dims) -> Vec<F> {
    let (n_in, n_out) = (d.input, d.output);
    (0..d.tokens * n_out)
        .map(|k| {
            let (t, o) = (k / n_out, k % n_out);
            F::from_f64((0..n_in).map(|j| x[t * n_in + j].to_f64() * w[o * n_in + j].to_f64()).sum())
        })
        .collect()
}

/// (dx [t, in], dW [out, in] = M⊙(dyᵀ·x)).
pub fn backward<F: Real>(x: &[F], w: &[F], keep: &[bool], dy: &[F], d: Dims) -> (Vec<F>, Vec<F>) {
    let (n_in, n_out) = (d.input, d.output);
    let dx = (0..d.tokens * n_in)
        .map(|k| {
            let (t, j) = (k / n_in, k % n_in);
            F::from_f64((0..n_out).map(|o| dy[t * n_out + o].to_f64() * w[o * n_in + j].to_f64()).sum())
        })
        .collect();
    let dw = (0..n_out * n_in)
        .map(|k| {
            let (o, j) = (k / n_in, k % n_in);
            if keep[k] {
                F::from_f64((0..d.tokens).map(|t| dy[t * n_out + o].to_f64() * x[t * n_in + j].to_f64()).sum())
            } else {
                F::default()
            }
        })
        .collect();
    (dx, dw)
}
