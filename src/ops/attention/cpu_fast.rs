//! The fast CPU attention path (f32): the same function as [`super::cpu`] (same layout,
//! formulas and inputs), with the per-head products done as matrices by the gemm crate:
//!   S = c·Q_h·K_gᵀ [T, T] (lower triangle used), P = softmax rows (f32, sums in f64),
//!   O_h = P·V_g; backward: P from lse, dV_g += Pᵀ·dO_h, dP = dO_h·V_gᵀ,
//!   dS = P ⊙ (dP − δ), dQ_h = c·dS·K_g, dK_g += c·dSᵀ·Q_h.
//! One rayon task per (batch, kv head) g: its query heads run in order, so the sums over a
//! group are deterministic. Tested against the reference in `super::tests`.

use rayon::prelude::*;

use super::cpu::Dims;
use crate::ops::matmul::cpu::strided;

/// `c (+)= alpha·a·b` on strided f32 views, single-threaded (the caller parallelises over
/// heads): [`crate::ops::matmul::cpu::strided`].
#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    (c_rs, c_cs): (usize, usize),
    accumulate: bool,
    alpha: f32,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    strided(m, n, k, (c, c_rs, c_cs), accumulate, alpha, (a, a_rs, a_cs), (b, b_rs, b_cs), false);
}

/// Offset of row t of head `head` of batch `b` in a [B, T, H, D] tensor.
fn head_offset(d: Dims, b: usize, head: usize, heads: usize) -> usize {
    (b * d.seq * heads + head) * d.head_dim
}

/// Gathers one head [T, D] of a [B, T, H, D] tensor into a contiguous buffer.
fn head(x: &[f32], d: Dims, b: usize, head: usize, heads: usize) -> Vec<f32> {
    let (t, dim) = (d.seq, d.head_dim);
    let mut out = Vec::with_capacity(t * dim);
    for i in 0..t {
        let o = head_offset(d, b, head, heads) + i * heads * dim;
        out.extend_from_slice(&x[o..o + dim]);
    }
    out
}

/// Per (b, g) task: S = c·Q_h·K_gᵀ for head h into `s` [T, T].
fn scores(q_h: &[f32], k_g: &[f32], d: Dims, s: &mut [f32]) {
    let (t, dim) = (d.seq, d.head_dim);
    gemm_f32(t, t, dim, s, (t, 1), false, d.scale() as f32, q_h, (dim, 1), k_g, (1, dim));
}

/// Forward: o (like q) and lse [B, Hq, T].
pub fn forward(q: &[f32], k: &[f32], v: &[f32], d: Dims, o: &mut [f32], lse: &mut [f32]) {
    let (t, dim, group) = (d.seq, d.head_dim, d.group());
    // (o of each head [T, D], lse of each head [T]) per (b, g), in head order.
    let parts: Vec<Vec<(Vec<f32>, Vec<f32>)>> = (0..d.batch * d.kv_heads)
        .into_par_iter()
        .map(|bg| {
            let (b, g) = (bg / d.kv_heads, bg % d.kv_heads);
            let (k_g, v_g) = (head(k, d, b, g, d.kv_heads), head(v, d, b, g, d.kv_heads));
            let mut s = vec![0f32; t * t];
            (g * group..(g + 1) * group)
                .map(|h| {
                    let q_h = head(q, d, b, h, d.q_heads);
                    scores(&q_h, &k_g, d, &mut s);
                    let mut lse_h = vec![0f32; t];
                    for i in 0..t {
                        let row = &mut s[i * t..(i + 1) * t];
                        let max = row[..=i].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                        let mut sum = 0f64;
                        for x in row[..=i].iter_mut() {
                            *x = (*x - max).exp();
                            sum += *x as f64;
                        }
                        let inv = (1.0 / sum) as f32;
                        row[..=i].iter_mut().for_each(|x| *x *= inv);
                        row[i + 1..].fill(0.0);
                        lse_h[i] = (max as f64 + sum.ln()) as f32;
                    }
                    let mut o_h = vec![0f32; t * dim];
                    gemm_f32(t, dim, t, &mut o_h, (dim, 1), false, 1.0, &s, (t, 1), &v_g, (dim, 1));
                    (o_h, lse_h)
                })
                .collect()
        })
        .collect();
    for (bg, heads) in parts.into_iter().enumerate() {
        let (b, g) = (bg / d.kv_heads, bg % d.kv_heads);
        for (j, (o_h, lse_h)) in heads.into_iter().enumerate() {
            let h = g * group + j;
            for i in 0..t {
                let dst = head_offset(d, b, h, d.q_heads) + i * d.q_heads * dim;
                o[dst..dst + dim].copy_from_slice(&o_h[i * dim..(i + 1) * dim]);
            }
            lse[(b * d.q_heads + h) * t..(b * d.q_heads + h + 1) * t].copy_from_slice(&lse_h);
        }
    }
}

/// Backward: dq (like q), dk and dv (like k), each when given.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    d_o: &[f32],
    d: Dims,
    dq: Option<&mut [f32]>,
    dk: Option<&mut [f32]>,
    dv: Option<&mut [f32]>,
) {
    let (t, dim, group) = (d.seq, d.head_dim, d.group());
    let c = d.scale() as f32;
    type Part = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);
    let parts: Vec<Part> = (0..d.batch * d.kv_heads)
        .into_par_iter()
        .map(|bg| {
            let (b, g) = (bg / d.kv_heads, bg % d.kv_heads);
            let (k_g, v_g) = (head(k, d, b, g, d.kv_heads), head(v, d, b, g, d.kv_heads));
            let (mut dk_g, mut dv_g) = (vec![0f32; t * dim], vec![0f32; t * dim]);
            let mut p = vec![0f32; t * t];
            let mut dp = vec![0f32; t * t];
            let dq_heads = (g * group..(g + 1) * group)
                .map(|h| {
                    let q_h = head(q, d, b, h, d.q_heads);
                    let o_h = head(o, d, b, h, d.q_heads);
                    let do_h = head(d_o, d, b, h, d.q_heads);
                    let lse_h = &lse[(b * d.q_heads + h) * t..(b * d.q_heads + h + 1) * t];
                    scores(&q_h, &k_g, d, &mut p);
                    for i in 0..t {
                        let row = &mut p[i * t..(i + 1) * t];
                        row[..=i].iter_mut().for_each(|x| *x = (*x - lse_h[i]).exp());
                        row[i + 1..].fill(0.0);
                    }
                    // dV_g += Pᵀ·dO_h
                    gemm_f32(t, dim, t, &mut dv_g, (dim, 1), true, 1.0, &p, (1, t), &do_h, (dim, 1));
                    // dP = dO_h·V_gᵀ, then dS = P ⊙ (dP − δ) in place.
                    gemm_f32(t, t, dim, &mut dp, (t, 1), false, 1.0, &do_h, (dim, 1), &v_g, (1, dim));
                    for i in 0..t {
                        let delta: f64 = (0..dim).map(|e| do_h[i * dim + e] as f64 * o_h[i * dim + e] as f64).sum();
                        let delta = delta as f32;
                        for j in 0..=i {
                            dp[i * t + j] = p[i * t + j] * (dp[i * t + j] - delta);
                        }
                        dp[i * t + i + 1..(i + 1) * t].fill(0.0);
                    }
                    // dK_g += c·dSᵀ·Q_h;  dQ_h = c·dS·K_g
                    gemm_f32(t, dim, t, &mut dk_g, (dim, 1), true, c, &dp, (1, t), &q_h, (dim, 1));
                    let mut dq_h = vec![0f32; t * dim];
                    gemm_f32(t, dim, t, &mut dq_h, (dim, 1), false, c, &dp, (t, 1), &k_g, (dim, 1));
                    dq_h
                })
                .collect();
            (dq_heads, dk_g, dv_g)
        })
        .collect();
    let (mut dq, mut dk, mut dv) = (dq, dk, dv);
    for (bg, (dq_heads, dk_g, dv_g)) in parts.into_iter().enumerate() {
        let (b, g) = (bg / d.kv_heads, bg % d.kv_heads);
        for i in 0..t {
            let kv = head_offset(d, b, g, d.kv_heads) + i * d.kv_heads * dim;
            if let Some(dk) = dk.as_deref_mut() {
                dk[kv..kv + dim].copy_from_slice(&dk_g[i * dim..(i + 1) * dim]);
            }
            if let Some(dv) = dv.as_deref_mut() {
                dv[kv..kv + dim].copy_from_slice(&dv_g[i * dim..(i + 1) * dim]);
            }
            if let Some(dq) = dq.as_deref_mut() {
                for (j, dq_h) in dq_heads.iter().enumerate() {
                    let qo = head_offset(d, b, g * group + j, d.q_heads) + i * d.q_heads * dim;
                    dq[qo..qo + dim].copy_from_slice(&dq_h[i * dim..(i + 1) * dim]);
                }
            }
        }
    }
}
