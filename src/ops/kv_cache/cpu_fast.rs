//! The fast CPU path of [`super::cpu::attention`] (same layout and formulas): one rayon task
//! per (query row n, query head h), f32 math on the cache's own element type (a BF16 cache is
//! widened per element as it is read, never copied whole). Two passes over the keys
//! 0 ..= positions[n]: scores s_u = (c·q)·k_u and their max, then p_u = e^{s_u − max},
//! o = Σ_u p_u·v_u / Σ_u p_u (the sum of p in f64). The inner loops over D auto-vectorize:
//! the dot product keeps 8 partial sums. Tested against the reference in `super::tests`.

use rayon::prelude::*;

use super::cpu::AttentionDims;
use crate::storage::FloatElement;

/// a·b with `b` widened to f32, in 8 independent partial sums so that it vectorizes.
fn dot<T: FloatElement>(a: &[f32], b: &[T]) -> f32 {
    const LANES: usize = 8;
    let (a8, b8) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y.to_f32()).sum();
    let mut partial = [0f32; LANES];
    for (x, y) in a8.zip(b8) {
        for i in 0..LANES {
            partial[i] += x[i] * y[i].to_f32();
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// o [N, Hq, D] (f32) from q [N, Hq, D] and the caches [B, S, Hkv, D].
pub fn attention<T: FloatElement>(
    q: &[T],
    k: &[T],
    v: &[T],
    d: AttentionDims,
    seqs: &[u32],
    positions: &[u32],
    o: &mut [f32],
) {
    let dim = d.cache.head_dim;
    o.par_chunks_mut(dim).enumerate().for_each(|(row, out)| {
        let (n, h) = (row / d.q_heads, row % d.q_heads);
        attend(&q[row * dim..(row + 1) * dim], k, v, d, (seqs[n], positions[n]), h, out);
    });
}

/// One query row: `out` [D] = attention of `q_row` [D] (query head `head`) over keys
/// 0 ..= pos of sequence `seq` (`slot` = (seq, pos)) in the caches [B, S, Hkv, D].
pub fn attend<Q: FloatElement, T: FloatElement>(
    q_row: &[Q],
    k: &[T],
    v: &[T],
    d: AttentionDims,
    slot: (u32, u32),
    head: usize,
    out: &mut [f32],
) {
    let dim = d.cache.head_dim;
    let scale = d.scale() as f32;
    let keys = slot.1 as usize + 1;
    // Kv head g of this sequence, [keys, D] with a stride of one cache row (Hkv·D).
    let start = d.cache.row_offset(slot.0, 0) + head / d.group() * dim;
    let (stride, end) = (d.cache.row_len(), start + (keys - 1) * d.cache.row_len() + dim);
    let (k_head, v_head) = (&k[start..end], &v[start..end]);
    let q_row: Vec<f32> = q_row.iter().map(|x| x.to_f32() * scale).collect();
    let scores: Vec<f32> = k_head.chunks(stride).map(|k_u| dot(&q_row, &k_u[..dim])).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    out.fill(0.0);
    let mut sum = 0f64;
    for (v_u, s) in v_head.chunks(stride).zip(scores) {
        let p = (s - max).exp();
        sum += p as f64;
        for (acc, x) in out.iter_mut().zip(&v_u[..dim]) {
            *acc += p * x.to_f32();
        }
    }
    let inv = (1.0 / sum) as f32;
    out.iter_mut().for_each(|x| *x *= inv);
}
