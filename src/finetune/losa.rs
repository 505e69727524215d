//! LoSA (Huang et al. 2025; wzhuang-xmu/LoSA `main.py`, `lib/prune.py`, `CKA/cka.py`,
//! `peft/tuners/lora/layer.py`), as `ALGORITHMS.md` gives it: sparsity and fine-tuning
//! together, in T stages. [`Losa`] drives the stages inside [`super::Repair`]; before the
//! first step of stage t it takes the current model with its adapters merged and
//! - records every decoder layer's input on the first `cka_samples` calibration windows,
//!   and from their centred Gram matrices the linear CKA between layers ([`linear_cka`]),
//!   each layer's redundancy ([`redundancy`]) and its sparsity ([`allocate_sparsity`]:
//!   minimise `Σ x_i·exp(−β·r_i)` with mean `s_t = s·(1 − (1 − t/T)³)` ([`stage_sparsity`]),
//!   `x_i ∈ [s_t − δ, s_t + δ]`, solved exactly by sorting);
//! - re-prunes the merged weights with Wanda at those sparsities (layer-sequential, all
//!   calibration windows, one merged weight alive at a time), then unmerges: the kept
//!   entries take their base values back (the base is always the source weight under the
//!   current mask), the new mask masks the adapters;
//! - measures each layer's reconstruction loss against the source model's layer outputs,
//!   `Σ((Y_src − Y)/c)²/dim` with c the per-feature L2 norm of Y_src, and gives the layer
//!   a rank in proportion ([`allocate_ranks`]; mean R̄_t = R − T + t, rising by one per
//!   stage to the requested rank R; at most 2R, and no cap at 8 as in their code); the
//!   seven projections of a layer share it. Adapters grow by new Kaiming rows of A and
//!   zero columns of B (the product is unchanged) and shrink to the best approximation of
//!   their product B·A at the new rank (its truncated SVD); the scale stays α/R;
//! - restarts the optimizer and the schedule over the stage's steps (their split: a fifth
//!   of the steps in each stage but the last, which takes the rest).
//!
//! Deviations, stated: calibration windows are the first training windows (their code
//! draws C4 samples); the re-prune is Wanda only (their SparseGPT variant updates kept
//! weights, which would make the base differ from the source under the mask); a source
//! that is already pruned keeps its zeros (entries a stage's allocation would keep but the
//! model has at 0 stay pruned).

use std::ops::Range;
use std::time::Instant;

use super::adapters::{adapter_params, attach_masked_lora, kaiming_uniform, LoraOptions};
use super::trainer::{TrainData, Trainer};
use crate::model::llama::{Llama, Proj};
use crate::nn::Linear;
use crate::prune::calib::Activations;
use crate::prune::{prune_model, Allocation, Method, Pattern, PruneOptions};
use crate::sparse::{SparseFormat, SparseWeight};
use crate::{Error, Result, Tensor};

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
    crate::linalg::gemm_f64(n, n, d, &mut k, n, false, 1.0, x, d, false, x, d, true);
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

/// LoSA's constants (their defaults).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LosaOptions {
    /// Stages T.
    pub stages: usize,
    /// Final mean sparsity of the decoder linears (None: the source model's own).
    pub target: Option<f64>,
    /// Calibration windows for the re-prune and the reconstruction loss (their 128).
    pub calib_samples: usize,
    /// Of those, the windows whose layer inputs give the CKA redundancy (their 64).
    pub cka_samples: usize,
    /// β of the importance `exp(−β·r_i)` (1 with Wanda).
    pub beta: f64,
}

impl Default for LosaOptions {
    fn default() -> Self {
        LosaOptions { stages: 5, target: None, calib_samples: 128, cka_samples: 64, beta: 1.0 }
    }
}

/// What one stage did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LosaStage {
    /// 1-based stage number.
    pub stage: usize,
    /// The optimizer steps it trains (0-based, end exclusive).
    pub steps: Range<usize>,
    /// Its mean sparsity s_t.
    pub sparsity: f64,
    /// Per layer: CKA redundancy (sums to 1).
    pub redundancy: Vec<f64>,
    /// Per layer: the allocated sparsity.
    pub allocated: Vec<f64>,
    /// Per layer: the fraction of the seven linears' weights outside the new masks.
    pub achieved: Vec<f64>,
    /// Per layer: reconstruction loss against the source model.
    pub recon_loss: Vec<f64>,
    /// Per layer: adapter rank.
    pub ranks: Vec<usize>,
    /// Wall-clock seconds of the re-selection (not of the training).
    pub seconds: f64,
}

/// Step ranges of `stages` stages over `steps` steps: `steps / stages` each, the last
/// stage taking the rest (so it always has a step when there is one).
pub fn stage_steps(steps: usize, stages: usize) -> Vec<Range<usize>> {
    let per = steps / stages.max(1);
    (0..stages).map(|k| k * per..if k + 1 == stages { steps } else { (k + 1) * per }).collect()
}

/// Calibration windows per forward chunk.
const CHUNK: usize = 4;

/// LoSA in progress: its calibration data, the source model's layer outputs, and the
/// stages done so far.
pub struct Losa {
    /// The constants.
    pub opts: LosaOptions,
    /// The final mean sparsity.
    pub target: f64,
    /// Stages done so far.
    pub stages: Vec<LosaStage>,
    rank: usize,
    /// The largest rank any projection can use (its smaller dimension).
    r_cap: usize,
    seed: u64,
    split: Vec<Range<usize>>,
    calib: Vec<Vec<u32>>,
    /// Per decoder layer, the source model's outputs on `calib` (host f32 [n·T, dim]).
    source_outputs: Vec<Vec<f32>>,
}

impl std::fmt::Debug for Losa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Losa({:?}, target {}, {} stages done)", self.opts, self.target, self.stages.len())
    }
}

/// The calibration activations of every chunk, concatenated on the host: [n·T, dim].
fn host_rows(acts: &Activations) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    for c in acts.chunks() {
        v.extend(c.to_f32_vec()?);
    }
    Ok(v)
}

/// `Σ((src − y)/c)² / dim` with c the L2 norm of each feature (column) of `src` [rows, dim];
/// features with c = 0 contribute nothing.
pub fn recon_loss(src: &[f32], y: &[f32], dim: usize) -> f64 {
    let mut norm = vec![0f64; dim];
    for row in src.chunks(dim) {
        for (n, &v) in norm.iter_mut().zip(row) {
            *n += f64::from(v) * f64::from(v);
        }
    }
    let mut loss = 0f64;
    for (a, b) in src.chunks(dim).zip(y.chunks(dim)) {
        for ((&u, &v), n) in a.iter().zip(b).zip(&norm) {
            if *n > 0.0 {
                let d = f64::from(u) - f64::from(v);
                loss += d * d / n;
            }
        }
    }
    loss / dim as f64
}

/// A and B at rank `rank`: grown by fresh Kaiming rows of A (seeded) and zero columns of B,
/// or shrunk to the best rank-`rank` approximation of B·A (truncated SVD, A's rows scaled
/// to Kaiming's expected norm 1/√3, B taking the singular values).
pub fn resize_adapter(a: &Tensor, b: &Tensor, rank: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let [r, inp] = a.shape().dims_n::<2>("adapter A")?;
    let [out, rb] = b.shape().dims_n::<2>("adapter B")?;
    if rb != r || rank == 0 {
        return Err(Error::invalid(format!("cannot resize A {} and B {} to rank {rank}", a.shape(), b.shape())));
    }
    if rank == r {
        return Ok((a.clone(), b.clone()));
    }
    let (af, bf) = (a.to_f32_vec()?, b.to_f32_vec()?);
    let fresh = kaiming_uniform(rank, inp, seed);
    let (mut na, mut nb) = (vec![0f32; rank * inp], vec![0f32; out * rank]);
    if rank > r {
        na[..r * inp].copy_from_slice(&af);
        na[r * inp..].copy_from_slice(&fresh[r * inp..]);
        for i in 0..out {
            nb[i * rank..i * rank + r].copy_from_slice(&bf[i * r..(i + 1) * r]);
        }
    } else {
        let to64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let (us, v, _) = crate::linalg::low_rank_svd(&to64(&bf), &to64(&af), out, r, inp)?;
        let c = 1.0 / 3f64.sqrt();
        for j in 0..rank {
            let row = &v[j * inp..(j + 1) * inp];
            if row.iter().all(|&x| x == 0.0) {
                // A direction A did not span: its singular value is 0 too; start it afresh.
                na[j * inp..(j + 1) * inp].copy_from_slice(&fresh[j * inp..(j + 1) * inp]);
                continue;
            }
            for (dst, &x) in na[j * inp..(j + 1) * inp].iter_mut().zip(row) {
                *dst = (c * x) as f32;
            }
            for i in 0..out {
                nb[i * rank + j] = (us[i * r + j] / c) as f32;
            }
        }
    }
    Ok((
        Tensor::from_f32(na, [rank, inp], a.dtype(), a.device())?,
        Tensor::from_f32(nb, [out, rank], b.dtype(), b.device())?,
    ))
}

impl Losa {
    /// Sets LoSA up on `source` (dense, or pruned with zeros) for a run of `steps` steps:
    /// the model with masked-LoRA adapters (rank `lora.rank`, bitmask base) to train, the
    /// calibration windows (the first `calib_samples` of `data`), and the source's
    /// decoder-layer outputs on them (kept on the host for the reconstruction loss).
    pub fn new(
        source: &Llama,
        opts: LosaOptions,
        lora: LoraOptions,
        data: &TrainData,
        steps: usize,
    ) -> Result<(Losa, Llama)> {
        if opts.stages == 0 || opts.calib_samples == 0 || opts.cka_samples < 2 || opts.beta.is_nan() || opts.beta < 0.0
        {
            return Err(Error::invalid(format!(
                "LoSA needs at least 1 stage, 1 calibration window, 2 CKA windows and β ≥ 0 (got {opts:?})"
            )));
        }
        if lora.format != SparseFormat::Bitmask {
            return Err(Error::invalid("LoSA allocates unstructured per-layer sparsity: N:M bases are not supported"));
        }
        let target = match opts.target {
            Some(t) => t,
            None => source.sparsity()?,
        };
        if !(target > 0.0 && target < 1.0) {
            return Err(Error::invalid(format!(
                "LoSA needs a target sparsity in (0, 1), got {target} (a dense source needs one given)"
            )));
        }
        let calib = data.inputs(opts.calib_samples);
        let cfg = source.config.clone();
        let mut acts = Activations::embed(&source.embed, &calib, CHUNK)?;
        let mut source_outputs = Vec::with_capacity(source.layers.len());
        for layer in &source.layers {
            acts.advance(layer, &cfg)?;
            source_outputs.push(host_rows(&acts)?);
        }
        let model = attach_masked_lora(source, lora)?;
        let r_cap = Proj::ALL.iter().map(|p| p.shape(&cfg).into_iter().min().unwrap_or(1)).min().unwrap_or(1);
        let losa = Losa {
            opts,
            target,
            stages: Vec::new(),
            rank: lora.rank,
            r_cap,
            seed: lora.seed,
            split: stage_steps(steps, opts.stages),
            calib,
            source_outputs,
        };
        Ok((losa, model))
    }

    /// The stage that starts before step `step` + 1 and has not been set up yet.
    pub fn due(&self, step: usize) -> Option<usize> {
        let k = self.stages.len();
        (k < self.split.len() && self.split[k].start <= step).then_some(k + 1)
    }

    /// The mean rank of stage `k`: R − T + k (at least 1).
    fn mean_rank(&self, k: usize) -> usize {
        (self.rank + k).saturating_sub(self.opts.stages).max(1)
    }

    /// Sets up the next stage on `trainer` (see the module docs) and returns its record.
    pub fn advance(&mut self, trainer: &mut Trainer) -> Result<&LosaStage> {
        let t0 = Instant::now();
        let k = self.stages.len() + 1;
        let steps = self.split.get(k - 1).cloned().ok_or_else(|| Error::invalid("LoSA: every stage is done"))?;
        let s = stage_sparsity(self.target, k, self.opts.stages);
        let model = &mut trainer.model;
        let cfg = model.config.clone();
        let layers = model.layers.len();

        // Redundancy of each layer's input, and the per-layer sparsity.
        let n_cka = self.opts.cka_samples.min(self.calib.len());
        let mut acts = Activations::embed(&model.embed, &self.calib[..n_cka], CHUNK)?;
        let mut grams = Vec::with_capacity(layers);
        for (l, layer) in model.layers.iter().enumerate() {
            let x: Vec<f64> = host_rows(&acts)?.into_iter().map(f64::from).collect();
            grams.push(centred_gram(&x, n_cka, x.len() / n_cka));
            if l + 1 < layers {
                acts.advance(layer, &cfg)?;
            }
        }
        drop(acts);
        let redundancy = redundancy(&grams);
        let allocated = allocate_sparsity(&redundancy, s, self.opts.beta)?;

        // Re-prune the merged weights, one linear at a time, keeping the bases compressed
        // (prune_model re-masks masked-LoRA linears: base values under the new mask, the
        // adapters masked by it), then measure each layer against the source.
        let mut po = PruneOptions::new(Method::Wanda, Pattern::Unstructured(s));
        po.allocation = Allocation::Explicit(allocated.clone());
        prune_model(model, &self.calib, &po, &mut |_| {})?;
        let mut acts = Activations::embed(&model.embed, &self.calib, CHUNK)?;
        let mut recon = Vec::with_capacity(layers);
        for (layer, src) in model.layers.iter().zip(&self.source_outputs) {
            acts.advance(layer, &cfg)?;
            recon.push(recon_loss(src, &host_rows(&acts)?, cfg.hidden_size));
        }
        drop(acts);
        let ranks = allocate_ranks(&recon, self.mean_rank(k) * layers, (2 * self.rank).min(self.r_cap))?;

        // Re-size the adapters.
        let mut achieved = Vec::with_capacity(layers);
        for (l, layer) in model.layers.iter_mut().enumerate() {
            let (mut pruned, mut total) = (0usize, 0usize);
            for (i, p) in Proj::ALL.into_iter().enumerate() {
                let Linear::MaskedLora(lin) = layer.linear_mut(p) else {
                    return Err(Error::invalid("LoSA: the model's linears are not masked-LoRA linears"));
                };
                let seed = self.seed.wrapping_mul(7919).wrapping_add(((k * layers + l) * 7 + i) as u64);
                (lin.a, lin.b) = resize_adapter(&lin.a, &lin.b, ranks[l], seed)?;
                pruned += lin.base.rows() * lin.base.cols() - lin.base.nnz();
                total += lin.base.rows() * lin.base.cols();
            }
            achieved.push(pruned as f64 / total.max(1) as f64);
        }
        trainer.restart(adapter_params(&trainer.model), steps.clone())?;
        let stage = LosaStage {
            stage: k,
            steps,
            sparsity: s,
            redundancy,
            allocated,
            achieved,
            recon_loss: recon,
            ranks,
            seconds: t0.elapsed().as_secs_f64(),
        };
        self.stages.push(stage);
        Ok(self.stages.last().expect("just pushed"))
    }

    /// Rebuilds the state a checkpoint recorded after `stages`: each linear's mask (from
    /// `mask(<module>.mask)`) over the source weights still in `trainer`'s model (it must
    /// be freshly set up), adapters of the last stage's ranks (zeros: the checkpoint's
    /// values are restored next) and the optimizer and schedule of that stage.
    pub fn restore(
        &mut self,
        trainer: &mut Trainer,
        stages: Vec<LosaStage>,
        mut mask: impl FnMut(&str) -> Result<Tensor>,
    ) -> Result<()> {
        if !self.stages.is_empty() || stages.len() > self.split.len() {
            return Err(Error::invalid(format!(
                "LoSA: cannot restore {} stages into a run of {} with {} done",
                stages.len(),
                self.split.len(),
                self.stages.len()
            )));
        }
        let Some(last) = stages.last() else { return Ok(()) };
        if last.ranks.len() != trainer.model.layers.len() || last.steps != self.split[stages.len() - 1] {
            return Err(Error::invalid("LoSA: the checkpoint's stages do not match this run's model and steps"));
        }
        // Ranks come from the file: each within what allocation can give, before anything
        // is sized by them.
        let r_max = (2 * self.rank).min(self.r_cap);
        if let Some((l, r)) = last.ranks.iter().enumerate().find(|(_, &r)| r == 0 || r > r_max) {
            return Err(Error::invalid(format!(
                "LoSA: the checkpoint gives layer {l} rank {r}, outside 1..={r_max} for this run"
            )));
        }
        for (l, layer) in trainer.model.layers.iter_mut().enumerate() {
            for p in Proj::ALL {
                let Linear::MaskedLora(lin) = layer.linear_mut(p) else {
                    return Err(Error::invalid("LoSA: the model's linears are not masked-LoRA linears"));
                };
                let (rows, cols) = (lin.base.rows(), lin.base.cols());
                let m = super::checkpoint::read_mask(&mut mask, l, p, rows, cols)?;
                lin.base = SparseWeight::compress(&lin.base.to_dense()?, &m, SparseFormat::Bitmask)?;
                let r = last.ranks[l];
                lin.a = Tensor::zeros([r, cols], lin.a.dtype(), lin.a.device())?;
                lin.b = Tensor::zeros([rows, r], lin.b.dtype(), lin.b.device())?;
            }
        }
        trainer.restart(adapter_params(&trainer.model), last.steps.clone())?;
        self.stages = stages;
        Ok(())
    }
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

    /// B·A as f64 [out, in].
    fn product(a: &crate::Tensor, b: &crate::Tensor) -> Vec<f64> {
        let (r, inp, out) = (a.dims()[0], a.dims()[1], b.dims()[0]);
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        (0..out * inp)
            .map(|i| (0..r).map(|j| f64::from(b[(i / inp) * r + j]) * f64::from(a[j * inp + i % inp])).sum())
            .collect()
    }

    /// Growing keeps B·A exactly (new rows of A meet zero columns of B); shrinking to a rank
    /// the product actually has keeps it too, to rounding; the new A's rows are Kaiming-sized.
    #[test]
    fn adapters_resize_without_changing_what_they_can_keep() {
        use crate::{DType, Device, Tensor};
        let (out, inp) = (9, 13);
        let cpu = Device::cpu();
        let a = Tensor::from_f32(crate::testing::random_f32(4 * inp, 1.0, 1), [4, inp], DType::F32, &cpu).unwrap();
        // B = B2·C: rank 2 although it has 4 columns.
        let (b2, c) = (crate::testing::random_f32(out * 2, 1.0, 2), crate::testing::random_f32(2 * 4, 1.0, 3));
        let b: Vec<f32> = (0..out * 4).map(|i| (0..2).map(|j| b2[(i / 4) * 2 + j] * c[j * 4 + i % 4]).sum()).collect();
        let b = Tensor::from_f32(b, [out, 4], DType::F32, &cpu).unwrap();
        let want = product(&a, &b);
        let (ga, gb) = resize_adapter(&a, &b, 6, 7).unwrap();
        assert_eq!((ga.dims(), gb.dims()), (&[6, inp][..], &[out, 6][..]));
        assert_eq!(product(&ga, &gb), want, "growing changed B·A");
        let (sa, sb) = resize_adapter(&a, &b, 2, 7).unwrap();
        let got = product(&sa, &sb);
        crate::testing::assert_close_f64("shrunk B·A", &got, &want, 1e-5, 1e-5);
        for row in sa.to_f32_vec().unwrap().chunks(inp) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0 / 3f32.sqrt()).abs() < 1e-5, "row norm {norm}");
        }
        assert!(resize_adapter(&a, &b, 0, 7).is_err());
    }

    #[test]
    fn recon_loss_is_hand_computable() {
        // Two rows, two features; feature norms √(1+9) and √(4+0) = √10 and 2.
        let src = [1.0, 2.0, 3.0, 0.0];
        let y = [0.0, 2.0, 3.0, 1.0];
        // ((1−0)²/10 + (0−1)²/4) / 2
        assert!((recon_loss(&src, &y, 2) - (0.1 + 0.25) / 2.0).abs() < 1e-12);
        assert_eq!(stage_steps(10, 5), vec![0..2, 2..4, 4..6, 6..8, 8..10]);
        assert_eq!(stage_steps(7, 5), vec![0..1, 1..2, 2..3, 3..4, 4..7]);
        assert_eq!(stage_steps(3, 5), vec![0..0, 0..0, 0..0, 0..0, 0..3]);
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
