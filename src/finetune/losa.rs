//! LoSA's allocation rules (Huang et al. 2025; wzhuang-xmu/LoSA `main.py`, `lib/prune.py`,
//! `CKA/cka.py`), as `ALGORITHMS.md` gives them. The staged method that uses them (re-prune
//! the merged weights with Wanda at each stage, unmerge, re-size the adapters, fine-tune)
//! is not wired into [`super::Repair`] yet; these are its building blocks:
//! - [`stage_sparsity`]: `s_t = s·(1 − (1 − t/T)³)`;
//! - [`linear_cka`] and [`redundancy`]: linear CKA between layer inputs from their centred
//!   Gram matrices, `r_i = Σ_{j≠i} CKA(i, j)` normalised to sum 1;
//! - [`allocate_sparsity`]: minimise `Σ x_i·imp_i`, `imp_i = exp(−β·r_i)`, subject to
//!   mean(x) = s_t and `x_i ∈ [s_t − δ, s_t + δ]`, solved exactly (sort by importance);
//! - [`allocate_ranks`]: ranks proportional to each layer's reconstruction loss, clipped to
//!   [1, r_max], then moved by ±1 until they sum to R̄·L (no cap at 8, unlike their code).

use crate::{Error, Result};

/// Sparsity of stage `t` of `stages` towards `target`: `s·(1 − (1 − t/T)³)`.
pub fn stage_sparsity(target: f64, t: usize, stages: usize) -> f64 {
    let x = 1.0 - t as f64 / stages.max(1) as f64;
    target * (1.0 - x * x * x)
}

/// δ, the half-width of the per-layer range around the stage sparsity (0.01 up to 0.5,
/// 0.02 up to 0.6, 0.03 up to 0.7, then 0.01 more per 0.1).
pub fn delta(s: f64) -> f64 {
    if s <= 0.5 {
        0.01
    } else {
        0.01 + ((s - 0.5) / 0.1).ceil() * 0.01
    }
}

/// The centred Gram matrix K̃ = H·X·Xᵀ·H of `x` [n, d] (n samples), row-major [n, n].
pub fn centred_gram(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut k = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v: f64 = (0..d).map(|c| x[i * d + c] * x[j * d + c]).sum();
            k[i * n + j] = v;
            k[j * n + i] = v;
        }
    }
    let row: Vec<f64> = (0..n).map(|i| k[i * n..(i + 1) * n].iter().sum::<f64>() / n as f64).collect();
    let all = row.iter().sum::<f64>() / n as f64;
    for i in 0..n {
        for j in 0..n {
            k[i * n + j] += all - row[i] - row[j];
        }
    }
    k
}

/// Linear CKA of two centred Gram matrices: ⟨K̃a, K̃b⟩_F / (‖K̃a‖_F‖K̃b‖_F).
pub fn linear_cka(ka: &[f64], kb: &[f64]) -> f64 {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let den = (dot(ka, ka) * dot(kb, kb)).sqrt();
    if den > 0.0 {
        dot(ka, kb) / den
    } else {
        0.0
    }
}

/// Redundancy of each layer from the centred Grams of the layers' inputs:
/// `r_i = Σ_{j≠i} CKA(i, j)`, normalised to sum 1.
pub fn redundancy(grams: &[Vec<f64>]) -> Vec<f64> {
    let l = grams.len();
    let mut r = vec![0f64; l];
    for i in 0..l {
        for j in i + 1..l {
            let c = linear_cka(&grams[i], &grams[j]);
            r[i] += c;
            r[j] += c;
        }
    }
    let sum: f64 = r.iter().sum();
    if sum > 0.0 {
        r.iter_mut().for_each(|v| *v /= sum);
    }
    r
}

/// Per-layer sparsities minimising `Σ x_i·imp_i` with `imp_i = exp(−β·r_i)`, mean `s`,
/// each in `[s − δ, s + δ]`: the least important layers go to `s + δ`, the most important
/// to `s − δ`; with an odd count the middle one stays at `s` (an exact optimum of the LP).
pub fn allocate_sparsity(redundancy: &[f64], s: f64, beta: f64) -> Result<Vec<f64>> {
    let l = redundancy.len();
    if l == 0 || !(0.0..1.0).contains(&s) {
        return Err(Error::invalid(format!("LoSA allocation: {l} layers at sparsity {s}")));
    }
    let d = delta(s).min(s).min(1.0 - s);
    let imp: Vec<f64> = redundancy.iter().map(|r| (-beta * r).exp()).collect();
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&a, &b| imp[a].total_cmp(&imp[b]).then(a.cmp(&b)));
    let mut x = vec![s; l];
    for k in 0..l / 2 {
        x[order[k]] = s + d; // least important: pruned more
        x[order[l - 1 - k]] = s - d;
    }
    Ok(x)
}

/// Per-layer ranks: `r_i = clip(round(loss_i/Σloss · budget), 1, r_max)`, then +1 to the
/// largest losses (while below `budget`) or −1 to the smallest (while above) until
/// `Σ r_i = budget` (as far as [1, r_max] allows).
pub fn allocate_ranks(losses: &[f64], budget: usize, r_max: usize) -> Result<Vec<usize>> {
    let l = losses.len();
    if l == 0 || r_max == 0 || losses.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(Error::invalid(format!("LoSA ranks: {l} layers, r_max {r_max}, losses {losses:?}")));
    }
    let total: f64 = losses.iter().sum();
    let mut r: Vec<usize> = losses
        .iter()
        .map(|v| {
            let share = if total > 0.0 { v / total } else { 1.0 / l as f64 };
            ((share * budget as f64).round() as usize).clamp(1, r_max)
        })
        .collect();
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]).then(a.cmp(&b))); // largest first
    loop {
        let sum: usize = r.iter().sum();
        let moved = if sum < budget {
            order.iter().find(|&&i| r[i] < r_max).map(|&i| r[i] += 1)
        } else if sum > budget {
            order.iter().rev().find(|&&i| r[i] > 1).map(|&i| r[i] -= 1)
        } else {
            break;
        };
        if moved.is_none() {
            break;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_schedule_matches_the_published_values() {
        let got: Vec<f64> = (1..=5).map(|t| stage_sparsity(0.5, t, 5)).collect();
        for (g, want) in got.iter().zip([0.244, 0.392, 0.468, 0.496, 0.5]) {
            assert!((g - want).abs() < 1e-12, "{got:?}");
        }
        assert_eq!((delta(0.5), delta(0.6), delta(0.7)), (0.01, 0.02, 0.03));
    }

    /// CKA is 1 for a layer against a rescaled/rotated copy of itself, and redundancy is
    /// largest for the layers that resemble the others.
    #[test]
    fn cka_by_hand() {
        let (n, d) = (5, 3);
        let a: Vec<f64> = (0..n * d).map(|i| ((i * 7) % 5) as f64 - 2.0).collect();
        let scaled: Vec<f64> = a.iter().map(|v| 3.0 * v + 0.0).collect();
        // Permuting features is an orthogonal map: CKA unchanged.
        let perm: Vec<f64> = (0..n * d).map(|i| a[(i / d) * d + (d - 1 - i % d)]).collect();
        let (ka, ks, kp) = (centred_gram(&a, n, d), centred_gram(&scaled, n, d), centred_gram(&perm, n, d));
        assert!((linear_cka(&ka, &ks) - 1.0).abs() < 1e-12);
        assert!((linear_cka(&ka, &kp) - 1.0).abs() < 1e-12);
        // Centring: every row of K̃ sums to 0.
        assert!(ka.chunks(n).all(|row| row.iter().sum::<f64>().abs() < 1e-9));
        let other: Vec<f64> = (0..n * d).map(|i| ((i * 11) % 7) as f64).collect();
        let ko = centred_gram(&other, n, d);
        let r = redundancy(&[ka.clone(), ks, ko]);
        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(r[2] < r[0] && (r[0] - r[1]).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn sparsity_allocation_is_the_lp_optimum() {
        let red = [0.1, 0.4, 0.2, 0.3];
        let x = allocate_sparsity(&red, 0.5, 1.0).unwrap();
        assert!((x.iter().sum::<f64>() / 4.0 - 0.5).abs() < 1e-12);
        // Most redundant (least important) layers are pruned more.
        assert_eq!(x, vec![0.49, 0.51, 0.49, 0.51]);
        // Brute force over the vertices of the box with the mean constraint: no better one.
        let imp: Vec<f64> = red.iter().map(|r: &f64| (-r).exp()).collect();
        let cost = |x: &[f64]| x.iter().zip(&imp).map(|(a, b)| a * b).sum::<f64>();
        for mask in 0..16u32 {
            let y: Vec<f64> = (0..4).map(|i| if mask >> i & 1 == 1 { 0.51 } else { 0.49 }).collect();
            if (y.iter().sum::<f64>() / 4.0 - 0.5).abs() < 1e-12 {
                assert!(cost(&x) <= cost(&y) + 1e-15);
            }
        }
        assert!(allocate_sparsity(&[], 0.5, 1.0).is_err());
    }

    #[test]
    fn ranks_follow_the_losses_and_meet_the_budget() {
        let r = allocate_ranks(&[1.0, 2.0, 5.0, 0.0], 24, 64).unwrap();
        assert_eq!(r.iter().sum::<usize>(), 24);
        assert!(r[2] > r[1] && r[1] > r[0] && r[3] >= 1, "{r:?}");
        // Rounding overshoot is taken back from the smallest losses.
        let r = allocate_ranks(&[1.0, 1.0, 1.0], 10, 64).unwrap();
        assert_eq!(r.iter().sum::<usize>(), 10);
        // No cap beyond r_max: a dominant layer may exceed 8.
        let r = allocate_ranks(&[100.0, 1.0, 1.0, 1.0], 32, 64).unwrap();
        assert!(r[0] > 8 && r.iter().sum::<usize>() == 32, "{r:?}");
        assert!(allocate_ranks(&[f64::NAN], 4, 8).is_err());
    }
}
