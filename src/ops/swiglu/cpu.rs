//! SwiGLU reference over n elements (gate, up, h, dh, dgate, dup all `[n]`):
//!   σ(g) = 1 / (1 + e^(−g)),  silu(g) = g·σ(g),  h = silu(g)·up
//!   dgate = dh·up·σ(g)·(1 + g·(1 − σ(g))),  dup = dh·silu(g)

use crate::ops::Real;

fn sigmoid<F: Real>(g: F) -> F {
    // e^(−g) overflows to +inf for very negative g, which still gives σ = 0.
    F::from_f64(1.0) / (F::from_f64(1.0) + (-g).exp())
}

/// h = silu(gate) · up.
pub fn forward<F: Real>(gate: &[F], up: &[F], h: &mut [F]) {
    for ((o, &g), &u) in h.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid(g) * u;
    }
}

/// Writes `dgate` and/or `dup` (whichever is given).
pub fn backward<F: Real>(gate: &[F], up: &[F], dh: &[F], mut dgate: Option<&mut [F]>, mut dup: Option<&mut [F]>) {
    let one = F::from_f64(1.0);
    for i in 0..dh.len() {
        let (g, u, d) = (gate[i], up[i], dh[i]);
        let s = sigmoid(g);
        if let Some(dgate) = dgate.as_deref_mut() {
            dgate[i] = d * u * s * (one + g * (one - s));
        }
        if let Some(dup) = dup.as_deref_mut() {
            dup[i] = d * g * s;
        }
    }
}
