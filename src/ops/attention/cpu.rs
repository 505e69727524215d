//! Causal grouped-query attention reference, one (batch, query head) pair per rayon task.
//! q, o, do, dq: [B, T, Hq, D]; k, v, dk, dv: [B, T, Hkv, D]; lse: [B, Hq, T]; all row-major.
//! Query head h reads kv head h / (Hq / Hkv) (Hugging Face `repeat_kv` order), c = 1/sqrt(D):
//!   s_tu = c · q_t·k_u for u ≤ t,  lse_t = log Σ_{u≤t} e^{s_tu},  p_tu = e^{s_tu − lse_t}
//!   o_t = Σ_{u≤t} p_tu · v_u
//! Backward, with δ_t = do_t·o_t:
//!   ds_tu = p_tu · (do_t·v_u − δ_t),  dq_t = c · Σ_u ds_tu · k_u,
//!   dk_u = c · Σ_{t≥u, heads of the group} ds_tu · q_t,  dv_u = Σ_{t≥u, heads of the group} p_tu · do_t
//! All sums run in f64 whatever F is; p comes from the given lse and δ from the given o, as
//! in the CUDA kernels.

use rayon::prelude::*;

use crate::ops::Real;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch size B.
    pub batch: usize,
    /// Sequence length T.
    pub seq: usize,
    /// Query heads Hq.
    pub q_heads: usize,
    /// Key/value heads Hkv (divides Hq).
    pub kv_heads: usize,
    /// Head dimension D.
    pub head_dim: usize,
}

impl Dims {
    /// Elements of q, o and their gradients: B·T·Hq·D.
    pub fn q_len(&self) -> usize {
        self.batch * self.seq * self.q_heads * self.head_dim
    }

    /// Elements of k, v and their gradients: B·T·Hkv·D.
    pub fn kv_len(&self) -> usize {
        self.batch * self.seq * self.kv_heads * self.head_dim
    }

    /// Elements of lse: B·Hq·T.
    pub fn lse_len(&self) -> usize {
        self.batch * self.q_heads * self.seq
    }

    /// Query heads sharing one kv head: Hq / Hkv.
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// The softmax scale 1/sqrt(D).
    pub fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }
}

/// One head of a [B, T, H, D] tensor as a contiguous [T, D] f64 matrix.
fn gather_head<F: Real>(x: &[F], b: usize, head: usize, heads: usize, d: Dims) -> Vec<f64> {
    let (t_len, dim) = (d.seq, d.head_dim);
    let mut out = Vec::with_capacity(t_len * dim);
    for t in 0..t_len {
        let row = ((b * t_len + t) * heads + head) * dim;
        out.extend(x[row..row + dim].iter().map(|v| v.to_f64()));
    }
    out
}

/// Writes a [T, D] matrix into one head of a [B, T, H, D] tensor.
fn scatter_head<F: Real>(src: &[f64], x: &mut [F], b: usize, head: usize, heads: usize, d: Dims) {
    let (t_len, dim) = (d.seq, d.head_dim);
    for (t, src_row) in src.chunks_exact(dim).enumerate() {
        let row = ((b * t_len + t) * heads + head) * dim;
        for (dst, &s) in x[row..row + dim].iter_mut().zip(src_row) {
            *dst = F::from_f64(s);
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Forward: writes o (like q) and lse ([B, Hq, T]).
pub fn forward<F: Real>(q: &[F], k: &[F], v: &[F], d: Dims, o: &mut [F], lse: &mut [F]) {
    let (t_len, dim, scale) = (d.seq, d.head_dim, d.scale());
    // Per (b, h): o_head [T, D] (scattered below, o interleaves heads) and lse_head [T].
    let heads: Vec<(Vec<f64>, Vec<f64>)> = (0..d.batch * d.q_heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / d.q_heads, bh % d.q_heads);
            let g = h / d.group();
            let qh = gather_head(q, b, h, d.q_heads, d);
            let kh = gather_head(k, b, g, d.kv_heads, d);
            let vh = gather_head(v, b, g, d.kv_heads, d);
            let mut o_head = vec![0f64; t_len * dim];
            let mut lse_head = vec![0f64; t_len];
            let mut scores = vec![0f64; t_len];
            for t in 0..t_len {
                let qt = &qh[t * dim..(t + 1) * dim];
                for u in 0..=t {
                    scores[u] = scale * dot(qt, &kh[u * dim..(u + 1) * dim]);
                }
                let max = scores[..=t].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores[..=t].iter().map(|s| (s - max).exp()).sum();
                let lse_t = max + sum.ln();
                let ot = &mut o_head[t * dim..(t + 1) * dim];
                for u in 0..=t {
                    let p = (scores[u] - lse_t).exp();
                    for (o_d, v_d) in ot.iter_mut().zip(&vh[u * dim..(u + 1) * dim]) {
                        *o_d += p * v_d;
                    }
                }
                lse_head[t] = lse_t;
            }
            (o_head, lse_head)
        })
        .collect();
    for (bh, (o_head, lse_head)) in heads.iter().enumerate() {
        scatter_head(o_head, o, bh / d.q_heads, bh % d.q_heads, d.q_heads, d);
        for (dst, &l) in lse[bh * t_len..(bh + 1) * t_len].iter_mut().zip(lse_head) {
            *dst = F::from_f64(l);
        }
    }
}

/// Backward: writes dq (like q), dk and dv (like k), each only when given.
#[allow(clippy::too_many_arguments)]
pub fn backward<F: Real>(
    q: &[F],
    k: &[F],
    v: &[F],
    o: &[F],
    lse: &[F],
    d_o: &[F],
    d: Dims,
    dq: Option<&mut [F]>,
    dk: Option<&mut [F]>,
    dv: Option<&mut [F]>,
) {
    let (t_len, dim, scale) = (d.seq, d.head_dim, d.scale());
    // Per (b, h): dq_head, and this query head's share of dk and dv for its kv head,
    // each [T, D]; the shares are summed over the group below, in head order.
    let heads: Vec<[Vec<f64>; 3]> = (0..d.batch * d.q_heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / d.q_heads, bh % d.q_heads);
            let g = h / d.group();
            let qh = gather_head(q, b, h, d.q_heads, d);
            let oh = gather_head(o, b, h, d.q_heads, d);
            let doh = gather_head(d_o, b, h, d.q_heads, d);
            let kh = gather_head(k, b, g, d.kv_heads, d);
            let vh = gather_head(v, b, g, d.kv_heads, d);
            let lse_head = &lse[bh * t_len..(bh + 1) * t_len];
            let mut dq_head = vec![0f64; t_len * dim];
            let mut dk_share = vec![0f64; t_len * dim];
            let mut dv_share = vec![0f64; t_len * dim];
            for t in 0..t_len {
                let row = t * dim..(t + 1) * dim;
                let (qt, dot_t) = (&qh[row.clone()], &doh[row.clone()]);
                let delta_t = dot(dot_t, &oh[row.clone()]);
                for u in 0..=t {
                    let key = u * dim..(u + 1) * dim;
                    let (ku, vu) = (&kh[key.clone()], &vh[key.clone()]);
                    let p = (scale * dot(qt, ku) - lse_head[t].to_f64()).exp();
                    let ds = p * (dot(dot_t, vu) - delta_t);
                    for j in 0..dim {
                        dq_head[t * dim + j] += scale * ds * ku[j];
                        dk_share[u * dim + j] += scale * ds * qt[j];
                        dv_share[u * dim + j] += p * dot_t[j];
                    }
                }
            }
            [dq_head, dk_share, dv_share]
        })
        .collect();
    if let Some(dq) = dq {
        for (bh, [dq_head, _, _]) in heads.iter().enumerate() {
            scatter_head(dq_head, dq, bh / d.q_heads, bh % d.q_heads, d.q_heads, d);
        }
    }
    for (which, grad) in [(1, dk), (2, dv)] {
        let Some(grad) = grad else { continue };
        for bg in 0..d.batch * d.kv_heads {
            let (b, g) = (bg / d.kv_heads, bg % d.kv_heads);
            let mut sum = vec![0f64; t_len * dim];
            for h in g * d.group()..(g + 1) * d.group() {
                for (s, x) in sum.iter_mut().zip(&heads[b * d.q_heads + h][which]) {
                    *s += x;
                }
            }
            scatter_head(&sum, grad, b, g, d.kv_heads, d);
        }
    }
}
