//! Rotary position embedding reference, Hugging Face "rotate-half" layout.
//! x, y: [tokens, heads, head_dim] row-major (x [batch, seq, heads, head_dim] has batch·seq
//! tokens, token t of each sequence at p = pos_offset + t; or one position p per token);
//! half = head_dim / 2.
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

use std::borrow::Cow;

use crate::ops::Real;

/// `inv_freq_i = 1 / theta^((2i as f32) / head_dim)` in f32, i < head_dim / 2: HF's
/// `1.0 / (theta ** (arange(0, D, 2).float() / D))`.
pub fn inv_freq(theta: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Sizes of a [`rotate`] call: x is [tokens, heads, head_dim] (a [batch, seq, heads, head_dim]
/// tensor has batch·seq tokens).
#[derive(Clone, Copy, Debug)]
pub struct RopeDims {
    /// Tokens (rows of heads).
    pub tokens: usize,
    /// Heads per token (H).
    pub heads: usize,
    /// Features per head (D, even).
    pub head_dim: usize,
}

/// Where the tokens of a rotation sit.
#[derive(Clone, Copy, Debug)]
pub enum Positions<'a> {
    /// x is [batch, seq, ..]: token t of every sequence at pos_offset + t (training).
    Offset {
        /// Tokens per sequence (T).
        seq: usize,
        /// Position of token t = 0.
        pos_offset: usize,
    },
    /// One position per token (generation: each row of x at its own place).
    Each(&'a [u32]),
}

impl Positions<'_> {
    /// The position of each of `tokens` tokens.
    pub fn per_token(&self, tokens: usize) -> Cow<'_, [u32]> {
        match *self {
            Positions::Offset { seq, pos_offset } => {
                Cow::Owned((0..tokens).map(|token| (pos_offset + token % seq) as u32).collect())
            }
            Positions::Each(positions) => Cow::Borrowed(positions),
        }
    }
}

/// y = R(p)·x for every token, p = positions\[token\], or the inverse rotation R(p)ᵀ·x when
/// `inverse` (the backward). x, y: [tokens, heads, head_dim]; positions: \[tokens\].
pub fn rotate<F: Real>(x: &[F], inv_freq: &[f32], d: RopeDims, positions: &[u32], inverse: bool, y: &mut [F]) {
    let mut table = Vec::with_capacity(d.head_dim / 2);
    let mut at = None;
    for (row, (xr, yr)) in x.chunks_exact(d.head_dim).zip(y.chunks_exact_mut(d.head_dim)).enumerate() {
        let pos = positions[row / d.heads];
        if at != Some(pos) {
            angles(pos, inv_freq, &mut table);
            at = Some(pos);
        }
        rotate_head(xr, &table, inverse, yr);
    }
}

/// (sin, cos) of the angles of position `pos`: angle_i = pos·inv_freq_i in f32, its sine and
/// cosine in f64; one per frequency, into `table`.
pub fn angles(pos: u32, inv_freq: &[f32], table: &mut Vec<(f64, f64)>) {
    table.clear();
    table.extend(inv_freq.iter().map(|&f| ((pos as f32 * f) as f64).sin_cos()));
}

/// One head y \[head_dim\] = R·x (R ᵀ·x when `inverse`) with the angles of its position
/// (`table` from [`angles`], head_dim / 2 entries).
pub fn rotate_head<F: Real>(x: &[F], table: &[(f64, f64)], inverse: bool, y: &mut [F]) {
    let half = x.len() / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    for (i, &(sin, cos)) in table.iter().enumerate().take(half) {
        let sin = sign * sin;
        let (a, b) = (x[i].to_f64(), x[i + half].to_f64());
        y[i] = F::from_f64(a * cos - b * sin);
        y[i + half] = F::from_f64(b * cos + a * sin);
    }
}
