//! Rotary position embedding reference, Hugging Face "rotate-half" layout.
//! x, y: [batch, seq, heads, head_dim] row-major; half = head_dim / 2; p = pos_offset + t.
//!   inv_freq_i = 1 / theta^(2i / head_dim)            (f32, as HF computes it)
//!   angle = p · inv_freq_i                             (one f32 multiply)
//!   y_i      = x_i·cos(angle) − x_{i+half}·sin(angle)
//!   y_{i+half} = x_{i+half}·cos(angle) + x_i·sin(angle)
//! The inverse rotation (sin → −sin) is the backward: dx = Rᵀ·dy.
//!
//! Rounding, chosen so that this reference and the CUDA kernel see the same angles:
//! inv_freq and p·inv_freq are rounded to f32 exactly as HF does (and the kernel receives
//! this very inv_freq table); only cos/sin of that f32 angle are taken in f64 here, where
//! the kernel uses precise `sincosf` (about 1 ulp apart even at p ≈ 8000).

use crate::ops::Real;

/// `inv_freq_i = 1 / theta^((2i as f32) / head_dim)` in f32, i < head_dim / 2: HF's
/// `1.0 / (theta ** (arange(0, D, 2).float() / D))`.
pub fn inv_freq(theta: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Sizes of a [`rotate`] call: x is [batch, seq, heads, head_dim], positions start at
/// `pos_offset`.
#[derive(Clone, Copy, Debug)]
pub struct RopeDims {
    /// Tokens per sequence (T).
    pub seq: usize,
    /// Heads per token (H).
    pub heads: usize,
    /// Features per head (D, even).
    pub head_dim: usize,
    /// Position of token t = 0.
    pub pos_offset: usize,
}

/// y = R(p)·x, or the inverse rotation R(p)ᵀ·x when `inverse` (the backward).
pub fn rotate<F: Real>(x: &[F], inv_freq: &[f32], d: RopeDims, inverse: bool, y: &mut [F]) {
    let half = d.head_dim / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    for (row, (xr, yr)) in x.chunks_exact(d.head_dim).zip(y.chunks_exact_mut(d.head_dim)).enumerate() {
        let pos = (d.pos_offset + (row / d.heads) % d.seq) as f32;
        for i in 0..half {
            let angle = (pos * inv_freq[i]) as f64;
            let (sin, cos) = angle.sin_cos();
            let sin = sign * sin;
            let (a, b) = (xr[i].to_f64(), xr[i + half].to_f64());
            yr[i] = F::from_f64(a * cos - b * sin);
            yr[i + half] = F::from_f64(b * cos + a * sin);
        }
    }
}
