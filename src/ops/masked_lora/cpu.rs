//! Masked LoRA, the readable reference: everything materialised densely, f64 sums.
//! x [t, in], W⊙M as a dense [out, in] matrix with its mask `keep` [out·in], A [r, in],
//! B [out, r], s the LoRA scale.
//!   W_eff = W⊙M + s·M⊙(B·A),   y = x·W_effᵀ
//!   dx = dy·W_eff
//!   exact:       G = dyᵀ·x,  dB = s·(M⊙G)·Aᵀ,  dA = s·Bᵀ·(M⊙G)
//!   rearranged:  dB = s·dyᵀ·(x·Aᵀ),  dA = s·(dy·B)ᵀ·x     (LoRS: the mask dropped)

use crate::ops::Real;

/// Sizes of one masked-LoRA linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Rows of x (tokens).
    pub tokens: usize,
    /// Input features.
    pub input: usize,
    /// Output features.
    pub output: usize,
    /// LoRA rank.
    pub rank: usize,
}

/// How the adapter gradients are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterGrad {
    /// Through the mask: dΔ = M⊙(dyᵀ·x) (SP-LoRA, LoSA).
    Exact,
    /// As dense LoRA, without the mask (LoRS): no out × in product.
    Rearranged,
}

/// W_eff = W⊙M + s·M⊙(B·A), [out, in].
pub fn effective_weight<F: Real>(w: &[F], keep: &[bool], a: &[F], b: &[F], s: f64, d: Dims) -> Vec<f64> {
    let mut out = vec![0f64; d.output * d.input];
    for i in 0..d.output {
        for j in 0..d.input {
            if keep[i * d.input + j] {
                let ba: f64 = (0..d.rank).map(|k| b[i * d.rank + k].to_f64() * a[k * d.input + j].to_f64()).sum();
                out[i * d.input + j] = w[i * d.input + j].to_f64() + s * ba;
            }
        }
    }
    out
}

/// y = x·W_effᵀ, [t, out].
pub fn forward<F: Real>(x: &[F], w: &[F], keep: &[bool], a: &[F], b: &[F], s: f64, d: Dims) -> Vec<F> {
    let weff = effective_weight(w, keep, a, b, s, d);
    let mut y = vec![F::default(); d.tokens * d.output];
    for t in 0..d.tokens {
        for o in 0..d.output {
            let v: f64 = (0..d.input).map(|j| x[t * d.input + j].to_f64() * weff[o * d.input + j]).sum();
            y[t * d.output + o] = F::from_f64(v);
        }
    }
    y
}

/// (dx [t, in], dA [r, in], dB [out, r]).
#[allow(clippy::too_many_arguments)]
pub fn backward<F: Real>(
    x: &[F],
    w: &[F],
    keep: &[bool],
    a: &[F],
    b: &[F],
    dy: &[F],
    s: f64,
    d: Dims,
    mode: AdapterGrad,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let (t_len, n_in, n_out, r) = (d.tokens, d.input, d.output, d.rank);
    let weff = effective_weight(w, keep, a, b, s, d);
    let dx: Vec<F> = (0..t_len * n_in)
        .map(|k| {
            let (t, j) = (k / n_in, k % n_in);
            F::from_f64((0..n_out).map(|o| dy[t * n_out + o].to_f64() * weff[o * n_in + j]).sum())
        })
        .collect();
    let (da, db) = match mode {
        AdapterGrad::Exact => {
            // M⊙G, G = dyᵀ·x [out, in]
            let g: Vec<f64> = (0..n_out * n_in)
                .map(|k| {
                    let (o, j) = (k / n_in, k % n_in);
                    if keep[k] {
                        (0..t_len).map(|t| dy[t * n_out + o].to_f64() * x[t * n_in + j].to_f64()).sum()
                    } else {
                        0.0
                    }
                })
                .collect();
            let db = (0..n_out * r)
                .map(|k| {
                    let (o, q) = (k / r, k % r);
                    F::from_f64(s * (0..n_in).map(|j| g[o * n_in + j] * a[q * n_in + j].to_f64()).sum::<f64>())
                })
                .collect();
            let da = (0..r * n_in)
                .map(|k| {
                    let (q, j) = (k / n_in, k % n_in);
                    F::from_f64(s * (0..n_out).map(|o| b[o * r + q].to_f64() * g[o * n_in + j]).sum::<f64>())
                })
                .collect();
            (da, db)
        }
        AdapterGrad::Rearranged => {
            let xa: Vec<f64> = (0..t_len * r)
                .map(|k| {
                    let (t, q) = (k / r, k % r);
                    (0..n_in).map(|j| x[t * n_in + j].to_f64() * a[q * n_in + j].to_f64()).sum()
                })
                .collect();
            let dyb: Vec<f64> = (0..t_len * r)
                .map(|k| {
                    let (t, q) = (k / r, k % r);
                    (0..n_out).map(|o| dy[t * n_out + o].to_f64() * b[o * r + q].to_f64()).sum()
                })
                .collect();
            let db = (0..n_out * r)
                .map(|k| {
                    let (o, q) = (k / r, k % r);
                    F::from_f64(s * (0..t_len).map(|t| dy[t * n_out + o].to_f64() * xa[t * r + q]).sum::<f64>())
                })
                .collect();
            let da = (0..r * n_in)
                .map(|k| {
                    let (q, j) = (k / n_in, k % n_in);
                    F::from_f64(s * (0..t_len).map(|t| dyb[t * r + q] * x[t * n_in + j].to_f64()).sum::<f64>())
                })
                .collect();
            (da, db)
        }
    };
    (dx, da, db)
}
