//! Layer-wise sparsity: how a target s is spread over the L decoder layers (every linear
//! of layer l is pruned at s_l). The mean of s_l over layers is s.
//!
//! - Uniform: s_l = s.
//! - OWL (Yin et al. 2024; luuyin/OWL `lib/prune_all.py prune_wanda_outlier`): on the dense
//!   model, per layer, the outlier ratio D_l = 100·#(S > M·mean(S))/numel over the Wanda
//!   scores S of all seven linears concatenated (mean over all of them); D is min–max
//!   normalised to [0, 2λ], shifted to mean 1 − s, and read as each layer's density:
//!   s_l = 1 − D_l (a value ≤ 0 becomes 0.01, as in the reference). Defaults M = 5
//!   (the repository's README commands; its `main.py` default is 3), λ = 0.08.
//! - ATP (Huang et al. 2025; wzhuang-xmu/ATP `main.py`): s_l = s − β(L−1)/2 + β·l, sparsity
//!   rising linearly with depth. As in the reference, a β that would push a layer below 0
//!   or to 1 or above is rejected (no clamping), so the mean stays exactly s.
//! - Explicit: a list, one value per layer.

use crate::{Error, Result};

/// How sparsity is spread over layers.
#[derive(Clone, Debug, PartialEq)]
pub enum Allocation {
    /// Every layer at the target.
    Uniform,
    /// Outlier-weighted (OWL).
    Owl {
        /// Outlier threshold multiple of the mean score (M).
        m: f64,
        /// Half-width of the density range (λ).
        lambda: f64,
    },
    /// Arithmetic progression with step β (ATP).
    Atp {
        /// Common difference β.
        beta: f64,
    },
    /// Given per-layer sparsities.
    Explicit(Vec<f64>),
}

impl Allocation {
    /// OWL with its defaults (M = 5, λ = 0.08).
    pub fn owl() -> Self {
        Allocation::Owl { m: 5.0, lambda: 0.08 }
    }

    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Allocation::Uniform => "uniform",
            Allocation::Owl { .. } => "owl",
            Allocation::Atp { .. } => "atp",
            Allocation::Explicit(_) => "explicit",
        }
    }
}

/// Uniform: `layers` copies of s.
pub fn uniform(s: f64, layers: usize) -> Vec<f64> {
    vec![s; layers]
}

/// ATP: s_l = s − β(L−1)/2 + β·l; errors when a layer would leave [0, 1).
pub fn atp(s: f64, beta: f64, layers: usize) -> Result<Vec<f64>> {
    let half = beta * (layers.saturating_sub(1)) as f64 / 2.0;
    if beta < 0.0 || s - half < 0.0 || s + half >= 1.0 {
        return Err(Error::invalid(format!(
            "ATP step β = {beta} is illegal for sparsity {s} over {layers} layers: layers would span [{:.4}, {:.4}] \
             (need β ≥ 0 and all layers in [0, 1))",
            s - half,
            s + half
        )));
    }
    Ok((0..layers).map(|l| s - half + beta * l as f64).collect())
}

/// OWL: the outlier ratio of one layer's Wanda scores, in percent.
pub fn owl_outlier_ratio(scores: &[&[f32]], m: f64) -> f64 {
    let n: usize = scores.iter().map(|s| s.len()).sum();
    if n == 0 {
        return 0.0;
    }
    let mean = scores.iter().flat_map(|s| s.iter()).map(|&v| v as f64).sum::<f64>() / n as f64;
    let outliers = scores.iter().flat_map(|s| s.iter()).filter(|&&v| v as f64 > m * mean).count();
    100.0 * outliers as f64 / n as f64
}

/// OWL: per-layer sparsities from the layers' outlier ratios.
pub fn owl(ratios: &[f64], s: f64, lambda: f64) -> Vec<f64> {
    let (min, max) = ratios.iter().fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)));
    let range = max - min;
    let scaled: Vec<f64> =
        ratios.iter().map(|&r| if range > 0.0 { (r - min) / range * 2.0 * lambda } else { lambda }).collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len().max(1) as f64;
    scaled
        .iter()
        .map(|&d| {
            let density = d - mean + (1.0 - s);
            let sl = 1.0 - density;
            if sl <= 0.0 {
                0.01
            } else {
                sl
            }
        })
        .collect()
}

/// Checks an explicit list: one value per layer, each in [0, 1).
pub fn explicit(list: &[f64], layers: usize) -> Result<Vec<f64>> {
    if list.len() != layers {
        return Err(Error::invalid(format!("{} per-layer sparsities given for {layers} layers", list.len())));
    }
    if let Some(bad) = list.iter().find(|s| !(0.0..1.0).contains(*s)) {
        return Err(Error::invalid(format!("per-layer sparsity {bad} is outside [0, 1)")));
    }
    Ok(list.to_vec())
}

/// Mean of a list.
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_equal_the_target() {
        for (s, beta, layers) in [(0.5, 0.01, 30), (0.7, 0.02, 30), (0.3, 0.0, 7), (0.6, 0.005, 32)] {
            let v = atp(s, beta, layers).unwrap();
            assert!((mean(&v) - s).abs() < 1e-12, "ATP mean {} vs {s}", mean(&v));
            assert!(v.windows(2).all(|w| (w[1] - w[0] - beta).abs() < 1e-12), "arithmetic progression");
        }
        let ratios = [3.0, 5.5, 1.2, 8.0, 4.4, 2.0];
        for s in [0.5, 0.7] {
            let v = owl(&ratios, s, 0.08);
            assert!((mean(&v) - s).abs() < 1e-12, "OWL mean {} vs {s}", mean(&v));
            // More outliers → denser (less sparse); the range is 2λ.
            assert!(v[3] < v[2]);
            let spread = v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min);
            assert!((spread - 0.16).abs() < 1e-12);
        }
        assert_eq!(mean(&uniform(0.5, 30)), 0.5);
    }

    #[test]
    fn illegal_inputs_are_errors() {
        assert!(atp(0.7, 0.03, 30).unwrap_err().to_string().contains("illegal"));
        assert!(atp(0.1, 0.01, 30).is_err(), "first layers would go below 0");
        assert!(atp(0.5, -0.01, 30).is_err());
        assert!(explicit(&[0.5, 0.5], 3).is_err());
        assert!(explicit(&[0.5, 1.0, 0.2], 3).is_err());
        assert_eq!(explicit(&[0.5, 0.6, 0.4], 3).unwrap(), vec![0.5, 0.6, 0.4]);
    }

    #[test]
    fn outlier_ratio_counts_scores_above_m_times_the_mean() {
        // mean over both = (1+1+1+1+16)/5 = 4; threshold 5·4 = 20 → none; M = 3 → 16 > 12 → 1 of 5.
        let a = [1.0f32, 1.0, 1.0];
        let b = [1.0f32, 16.0];
        assert_eq!(owl_outlier_ratio(&[&a, &b], 5.0), 0.0);
        assert_eq!(owl_outlier_ratio(&[&a, &b], 3.0), 20.0);
    }
}
