//! Perplexity over token windows: `exp(mean next-token loss)` where the mean runs over
//! every scored position of every window (a window of n tokens scores n − 1 positions),
//! computed by the inference engine (each window one prefill step).

use std::time::Instant;

use serde::Serialize;

use crate::infer::InferModel;
use crate::Result;

/// Result of [`perplexity`].
#[derive(Clone, Debug, Serialize)]
pub struct PerplexityReport {
    /// exp(mean loss).
    pub perplexity: f64,
    /// Mean next-token loss (nats).
    pub mean_loss: f64,
    /// Positions scored.
    pub tokens_scored: u64,
    /// Windows evaluated.
    pub windows: u64,
    /// Wall time.
    pub seconds: f64,
    /// Tokens through the model per second (windows × seq-len / seconds).
    pub tokens_per_second: f64,
}

/// Perplexity of `model` over `windows`; `progress(done, total)` is called after each.
pub fn perplexity(
    model: &InferModel,
    windows: &[&[u32]],
    mut progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    let start = Instant::now();
    let (mut sum, mut count, mut tokens) = (0f64, 0usize, 0usize);
    for (i, w) in windows.iter().enumerate() {
        let (s, n) = model.window_loss_sum(w)?;
        sum += s;
        count += n;
        tokens += w.len();
        progress(i + 1, windows.len());
    }
    model.device().synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let mean_loss = if count > 0 { sum / count as f64 } else { f64::NAN };
    Ok(PerplexityReport {
        perplexity: mean_loss.exp(),
        mean_loss,
        tokens_scored: count as u64,
        windows: windows.len() as u64,
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
    })
}
