//! Learning-rate schedules: linear warmup from 0 to the peak over the first
//! `warmup_steps`, then cosine (to `min_lr`), linear (to 0) or constant. Steps count from 1;
//! as in transformers' schedulers, the first step after the warmup runs at the peak and the
//! floor is reached one step after the last (so no step runs at a zero rate).

use std::f64::consts::PI;

/// What follows the warmup.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Half a cosine from the peak down to `min_lr` one step after the last.
    Cosine,
    /// Straight line from the peak down to 0 one step after the last (LoSA's schedule).
    Linear,
    /// The peak throughout.
    Constant,
}

/// A warmup + decay schedule over `total` steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f32,
    /// Floor of the cosine decay.
    pub min_lr: f32,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Steps in all.
    pub total: usize,
    /// Shape after the warmup.
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate of (1-based) step `step`.
    pub fn lr(&self, step: usize) -> f32 {
        let (peak, min) = (f64::from(self.peak), f64::from(self.min_lr));
        if step <= self.warmup_steps {
            return (peak * step as f64 / self.warmup_steps.max(1) as f64) as f32;
        }
        let span = self.total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - 1 - self.warmup_steps) as f64 / span).min(1.0);
        let lr = match self.decay {
            Decay::Cosine => min + (peak - min) * 0.5 * (1.0 + (PI * progress).cos()),
            Decay::Linear => peak * (1.0 - progress),
            Decay::Constant => peak,
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_hits_its_ends() {
        let s = Schedule { peak: 1.0, min_lr: 0.1, warmup_steps: 4, total: 14, decay: Decay::Cosine };
        assert_eq!(s.lr(1), 0.25);
        assert_eq!((s.lr(4), s.lr(5)), (1.0, 1.0));
        // Halfway through the cosine (5 of its 10 steps done): the mean of peak and floor.
        assert!((s.lr(10) - 0.55).abs() < 1e-6, "{}", s.lr(10));
        // The last step still trains; the floor comes one step later.
        let last = 0.1 + 0.9 * 0.5 * (1.0 + (0.9 * PI).cos());
        assert!((f64::from(s.lr(14)) - last).abs() < 1e-6 && (s.lr(15) - 0.1).abs() < 1e-6);
        let lin = Schedule { decay: Decay::Linear, ..s };
        assert!((lin.lr(10) - 0.5).abs() < 1e-6 && (lin.lr(14) - 0.1).abs() < 1e-6 && lin.lr(15) == 0.0);
        // A one-step schedule without warmup runs at the peak.
        assert_eq!(Schedule { total: 1, warmup_steps: 0, decay: Decay::Linear, ..s }.lr(1), 1.0);
        let c = Schedule { decay: Decay::Constant, warmup_steps: 0, ..s };
        assert_eq!(c.lr(1), 1.0);
    }
}
