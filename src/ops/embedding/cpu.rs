//! Embedding lookup reference. weight, dweight: `[vocab, dim]`; ids: `[n]`; out, dout: `[n, dim]`.
//! ```text
//! out[k, :] = weight[ids[k], :]
//! dweight[v, :] = Σ_{k : ids[k] = v} dout[k, :]   (zero for ids that do not occur)
//! ```
//! Every id must be < vocab (checked by `ops::embedding` before calling).

use crate::ops::Real;

/// The gathered rows, [n, dim]. A pure copy, so it is generic over any element type
/// (a BF16 table is read as BF16, never widened as a whole).
pub fn forward<T: Copy>(weight: &[T], ids: &[u32], dim: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let start = id as usize * dim;
        out.extend_from_slice(&weight[start..start + dim]);
    }
    out
}

/// Scatter-add: overwrites `dweight` ([vocab, dim]) with the sum of `dout` rows per id,
/// accumulated in token order (the order the CUDA kernel uses too).
pub fn backward<F: Real>(ids: &[u32], dout: &[F], dim: usize, dweight: &mut [F]) {
    dweight.fill(F::default());
    for (&id, grad_row) in ids.iter().zip(dout.chunks_exact(dim)) {
        let start = id as usize * dim;
        for (acc, &g) in dweight[start..start + dim].iter_mut().zip(grad_row) {
            *acc += g;
        }
    }
}
