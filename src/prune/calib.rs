//! Calibration: token windows → per-linear input statistics, layer by layer.
//!
//! The driver follows locuslab/wanda `prune_wanda` and IST-DASLab/sparsegpt `llama.py`:
//! capture the inputs of decoder layer 0 (the embeddings of every sample); for each layer,
//! run it once over all samples while observing the inputs of its seven linears (four
//! distinct tensors: see [`LinearInput`]) and accumulating their statistics; prune all
//! seven; then run the layer again with the pruned weights to produce the next layer's
//! inputs. Memory: one layer's input activations for all samples, plus one chunk of
//! samples' intermediates.
//!
//! Statistics of an input X (tokens × in), accumulated in f64:
//! - `sq_norms[j] = Σ_t X_tj²` (Wanda, RIA, OWL: ‖X_j‖₂ = sqrt of it),
//! - `sums[j] = Σ_t X_tj` (DSnoT's `sum_metric_row` = sums / n_seq),
//! - `seq_var_sum[j] = Σ_sequences Var_t(X_tj)` (population variance within each
//!   sequence, summed; DSnoT's `var` is its mean over sequences, as `add_batch` there
//!   averages per-call variances weighted by token count),
//! - `xtx = Σ_t x_t x_tᵀ` [in, in] when a Hessian is needed (SparseGPT: H = (2/n)·XᵀX).
//!
//! The reference code divides these by the number of calibration sequences (not tokens);
//! [`InputStats::sequences`] is kept so that the scores use the same scale. The host
//! accumulator [`InputStats`] is the CPU reference of `ops::prune_stats` (re-exported here).

use std::collections::HashMap;

use crate::model::llama::{DecoderLayer, LinearInput, LlamaConfig};
use crate::ops;
pub use crate::ops::prune_stats::InputStats;
use crate::{Error, Result, Tensor};

/// Statistics of one input, where they were accumulated: host f64, or device f64 for
/// activations on a GPU.
pub enum Stats {
    /// On the host.
    Host(InputStats),
    /// On a CUDA device.
    Cuda(Box<crate::ops::prune_stats::CudaInputStats>),
}

impl Stats {
    fn new(like: &Tensor, dim: usize, req: StatsRequest) -> Result<Stats> {
        Ok(match like.device() {
            crate::Device::Cpu(_) => Stats::Host(InputStats::zeros(dim, req.xtx)),
            crate::Device::Cuda(d) => {
                Stats::Cuda(Box::new(crate::ops::prune_stats::CudaInputStats::new(d, dim, req.xtx)?))
            }
        })
    }

    fn accumulate(&mut self, x: &Tensor) -> Result<()> {
        match self {
            Stats::Host(s) => s.accumulate(x),
            Stats::Cuda(s) => s.accumulate(x),
        }
    }

    /// The host statistics themselves, or a host copy of device ones.
    pub fn into_host(self) -> Result<InputStats> {
        match self {
            Stats::Host(s) => Ok(s),
            Stats::Cuda(s) => s.to_host(),
        }
    }

    /// A host copy (or the host statistics themselves).
    pub fn to_host(&self) -> Result<std::borrow::Cow<'_, InputStats>> {
        Ok(match self {
            Stats::Host(s) => std::borrow::Cow::Borrowed(s),
            Stats::Cuda(s) => std::borrow::Cow::Owned(s.to_host()?),
        })
    }

    /// Calibration sequences seen.
    pub fn sequences(&self) -> usize {
        match self {
            Stats::Host(s) => s.sequences,
            Stats::Cuda(s) => s.sequences(),
        }
    }
}

/// What to collect per input.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatsRequest {
    /// Collect XᵀX (SparseGPT).
    pub xtx: bool,
}

/// The activations flowing through the model during sequential calibration: the current
/// layer's inputs, in chunks of samples ([chunk, T, dim] each, on the model's device).
/// A clone shares the chunks until either side advances.
#[derive(Clone)]
pub struct Activations {
    chunks: Vec<Tensor>,
}

impl Activations {
    /// Embeds `samples` (each a window of `seq_len` token ids) in chunks of `chunk` samples.
    pub fn embed(embedding: &Tensor, samples: &[Vec<u32>], chunk: usize) -> Result<Activations> {
        let Some(first) = samples.first() else {
            return Err(Error::invalid("calibration needs at least one sample"));
        };
        let t = first.len();
        if t == 0 || samples.iter().any(|s| s.len() != t) {
            return Err(Error::invalid("calibration samples must be non-empty and of one length"));
        }
        let mut chunks = Vec::new();
        for group in samples.chunks(chunk.max(1)) {
            let ids: Vec<u32> = group.iter().flatten().copied().collect();
            let ids = Tensor::from_vec(ids, [group.len(), t], embedding.device())?;
            chunks.push(ops::embedding::forward(embedding, &ids)?);
        }
        Ok(Activations { chunks })
    }

    /// Runs `layer` over every chunk, accumulating input statistics per [`LinearInput`].
    pub fn observe(
        &self,
        layer: &DecoderLayer,
        cfg: &LlamaConfig,
        req: StatsRequest,
    ) -> Result<HashMap<LinearInput, Stats>> {
        let mut stats: HashMap<LinearInput, Stats> = HashMap::new();
        for x in &self.chunks {
            let mut seen = |which: LinearInput, input: &Tensor| -> Result<()> {
                match stats.entry(which) {
                    std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().accumulate(input),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(Stats::new(input, input.shape().last_dim(), req)?).accumulate(input)
                    }
                }
            };
            layer.forward_observed(None, cfg, x, 0, Some(&mut seen))?;
        }
        Ok(stats)
    }

    /// Replaces the activations by `layer`'s outputs (the next layer's inputs).
    pub fn advance(&mut self, layer: &DecoderLayer, cfg: &LlamaConfig) -> Result<()> {
        for x in self.chunks.iter_mut() {
            *x = layer.forward(None, cfg, x, 0)?;
        }
        Ok(())
    }

    /// The chunks, [chunk, T, dim] each.
    pub fn chunks(&self) -> &[Tensor] {
        &self.chunks
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(Tensor::size_in_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close_f64, random_f32};
    use crate::{DType, Device};

    #[test]
    fn stats_match_direct_sums() {
        let dev = Device::cpu();
        let (rows, dim) = (13, 5);
        let v = random_f32(rows * dim, 1.0, 1);
        let mut s = InputStats::zeros(dim, true);
        let x = Tensor::from_f32(v.clone(), [1, rows, dim], DType::F32, &dev).unwrap();
        s.accumulate(&x).unwrap();
        s.accumulate(&x).unwrap();
        let v = &v;
        let col = |j: usize| (0..rows).map(move |t| v[t * dim + j] as f64);
        let sq: Vec<f64> = (0..dim).map(|j| 2.0 * col(j).map(|a| a * a).sum::<f64>()).collect();
        let sums: Vec<f64> = (0..dim).map(|j| 2.0 * col(j).sum::<f64>()).collect();
        let xtx: Vec<f64> =
            (0..dim * dim).map(|k| 2.0 * col(k / dim).zip(col(k % dim)).map(|(a, b)| a * b).sum::<f64>()).collect();
        assert_eq!((s.tokens, s.sequences), (2 * rows, 2));
        let var: Vec<f64> = (0..dim)
            .map(|j| {
                let m = col(j).sum::<f64>() / rows as f64;
                2.0 * col(j).map(|a| (a - m) * (a - m)).sum::<f64>() / rows as f64
            })
            .collect();
        assert_close_f64("seq_var_sum", &s.seq_var_sum, &var, 1e-12, 1e-10);
        assert_close_f64("sq_norms", &s.sq_norms, &sq, 1e-12, 1e-12);
        assert_close_f64("sums", &s.sums, &sums, 1e-12, 1e-12);
        assert_close_f64("xtx", s.xtx.as_ref().unwrap(), &xtx, 1e-12, 1e-12);
        let h = s.hessian().unwrap();
        assert_close_f64("H", &h, &xtx.iter().map(|v| v * 2.0 / 26.0).collect::<Vec<_>>(), 1e-12, 1e-12);
    }
}
