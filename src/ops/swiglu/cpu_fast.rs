//! The fast CPU path of [`super::cpu::forward`]: h \[n\] = silu(gate)·up = gate·σ(gate)·up
//! (gate, up, h all \[n\], f32), what the op and the inference step run on the CPU.
//!
//! σ(g) from e = e^(−|g|) ≤ 1 (`ops::exp_nonpositive`, within 2·10⁻⁷ relative):
//! 1 / (1 + e) for g ≥ 0, e / (1 + e) below. No call and no branch, so the loop vectorizes
//! (the reference's `exp` is a libm call per element, which kept the inference step's MLP
//! gating scalar: ~5% of a 512-token prefill of the default model, 1.3% now). Compiled for
//! AVX-512 and AVX2 as well, the best this CPU runs taken (the same arithmetic in every
//! lane, so the same results). The same ends as the reference: σ(+∞) = 1, σ(−∞) = 0, NaN
//! stays NaN; below g = −87 σ is 0 where the reference's is at most 2⁻¹²⁵.
//! Tested against the reference in f64 in `super::tests`.

use crate::ops::exp_nonpositive;
use crate::ops::infer_linear::cpu_fast::{compiled_for, Isa};

/// g·σ(g)·u, as the reference orders the products.
#[inline(always)]
fn gated(g: f32, u: f32) -> f32 {
    let e = exp_nonpositive(-g.abs());
    let top = if g >= 0.0 { 1.0 } else { e };
    g * (top / (1.0 + e)) * u
}

#[inline(always)]
fn run(gate: &[f32], up: &[f32], h: &mut [f32]) {
    for ((o, &g), &u) in h.iter_mut().zip(gate).zip(up) {
        *o = gated(g, u);
    }
}

/// h = silu(gate)·up; the three have one length.
///
/// # Panics
/// If the lengths differ.
pub fn forward(gate: &[f32], up: &[f32], h: &mut [f32]) {
    assert!(gate.len() == h.len() && up.len() == h.len(), "swiglu: gate, up and h differ in length");
    compiled_for(
        Isa::best(),
        #[inline(always)]
        |_| run(gate, up, h),
    )
}

/// [`run`] as compiled for the build's target, for the tests: the instruction sets must
/// agree bit for bit.
#[cfg(test)]
pub(crate) fn forward_portable(gate: &[f32], up: &[f32], h: &mut [f32]) {
    run(gate, up, h)
}
