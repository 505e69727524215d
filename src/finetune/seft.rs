//! SEFT (Xiao et al. 2025, arXiv 2505.24037): fine-tune the kept weights of the pruned model
//! themselves, at constant sparsity, with a topology that evolves every `interval` steps.
//! The authors' repository is not available to us: this follows the paper as its reviews
//! and its co-author's SpIEL code describe it (secondary sources), as given in
//! `ALGORITHMS.md`.
//!
//! - Every decoder linear becomes a compressed [`SparseWeight`] whose values tensor is the
//!   trained parameter ([`Linear::Sparse`]): gradients and AdamW moments exist only for kept
//!   entries, stored like the values (\[nnz\], or [out, in/m·n] for N:M).
//! - Evolution (drop–grow–adapt), per linear, after step t of T: the dense gradient G of
//!   the weight is summed over `grad_batches` micro-batches (the windows the next step will
//!   read, so a resumed run sees the same ones); k = round(p_t · nnz) with
//!   p_t = p₀·(1 + cos(π·t/T))/2; grow the k pruned entries with the largest |G| (value 0,
//!   moments 0); drop the k previously kept entries with the smallest |θ·G|, so the
//!   sparsity of every linear stays exactly what it was. For N:M a swap stays inside one
//!   group (its largest-|G| pruned entry in, its smallest-|θ·G| kept entry out), taking the
//!   k groups whose candidate has the largest |G|, so every group keeps N.
//! - Memory: evolution builds a dense copy of the model and the dense f32 gradients of all
//!   decoder linears for its duration (every `interval` steps), then frees them.

use super::dense_grad::decoder_linear_gradients;
use super::trainer::{TrainData, Trainer};
use crate::model::llama::{Llama, Proj};
use crate::nn::Linear;
use crate::sparse::{BitMask, SparseFormat, SparseWeight};
use crate::{DType, Error, Result, Tensor};

/// SEFT's constants.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeftOptions {
    /// Steps between evolutions (k = 60 for language-model data).
    pub interval: usize,
    /// p₀, the swap fraction at step 0.
    pub swap_fraction: f32,
    /// Micro-batches the evolution's dense gradient is summed over.
    pub grad_batches: usize,
}

impl Default for SeftOptions {
    /// Every 60 steps, p₀ = 0.2, gradient over 4 micro-batches.
    fn default() -> Self {
        SeftOptions { interval: 60, swap_fraction: 0.2, grad_batches: 4 }
    }
}

/// What one evolution did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evolution {
    /// The step it followed.
    pub step: usize,
    /// p_t.
    pub fraction: f32,
    /// Entries grown (= dropped) over all linears.
    pub swapped: usize,
    /// Kept entries over all linears.
    pub kept: usize,
}

/// p_t = p₀·(1 + cos(π·t/T))/2.
pub fn swap_fraction(p0: f32, step: usize, total: usize) -> f32 {
    let x = step as f64 / total.max(1) as f64;
    (f64::from(p0) * (1.0 + (std::f64::consts::PI * x).cos()) / 2.0) as f32
}

/// A copy of the pruned `model` (dense with zeros where pruned, or compressed) whose
/// decoder linears are compressed sparse weights with trainable values (mask = the
/// non-zeros, or N:M).
pub fn attach(model: &Llama, format: SparseFormat) -> Result<Llama> {
    let mut out = model.clone();
    for layer in &mut out.layers {
        for p in Proj::ALL {
            // The values are trained in place: a compressed input is copied, not shared.
            let w = match layer.linear(p) {
                Linear::Sparse(w) => SparseWeight::from_dense(&w.to_dense()?, format)?,
                other => super::adapters::pruned_base(other, format)?,
            };
            *layer.linear_mut(p) = Linear::Sparse(w);
        }
    }
    Ok(out)
}

/// The trained tensors by name: `<module>.values`, layer by layer in [`Proj::ALL`] order.
pub fn params(model: &Llama) -> Vec<(String, Tensor)> {
    sparse_linears(model)
        .map(|(l, p, w)| (format!("{}.values", super::module_name(l, p)), w.values().clone()))
        .collect()
}

fn sparse_linears(model: &Llama) -> impl Iterator<Item = (usize, Proj, &SparseWeight)> {
    model.layers.iter().enumerate().flat_map(|(l, layer)| {
        Proj::ALL.into_iter().filter_map(move |p| match layer.linear(p) {
            Linear::Sparse(w) => Some((l, p, w)),
            _ => None,
        })
    })
}

/// Puts saved masks (as [`super::checkpoint::masks`] names them) back into `model`'s sparse linears; their
/// values are zeroed (the caller restores them, e.g. from the checkpoint's parameters).
pub fn restore_masks(model: &mut Llama, mut get: impl FnMut(&str) -> Result<Tensor>) -> Result<()> {
    for (l, layer) in model.layers.iter_mut().enumerate() {
        for p in Proj::ALL {
            let Linear::Sparse(w) = layer.linear_mut(p) else { continue };
            let mask = super::checkpoint::read_mask(&mut get, l, p, w.rows(), w.cols())?;
            let zeros = Tensor::zeros([w.rows(), w.cols()], DType::F32, &crate::Device::cpu())?;
            w.repack(&zeros, &mask)?;
        }
    }
    Ok(())
}

/// The mask after one drop–grow round on a linear with dense values `theta`, dense
/// gradient `grad` and mask `old`, swapping (up to) `k` entries; see the module docs.
pub fn evolve_mask(theta: &[f32], grad: &[f32], old: &BitMask, k: usize, format: SparseFormat) -> BitMask {
    let (rows, cols) = (old.rows(), old.cols());
    let mut new = old.clone();
    let sens = |i: usize| (theta[i] * grad[i]).abs();
    match format {
        SparseFormat::Bitmask => {
            let mut grow: Vec<usize> = (0..rows * cols).filter(|&i| !old.get(i / cols, i % cols)).collect();
            let mut drop: Vec<usize> = (0..rows * cols).filter(|&i| old.get(i / cols, i % cols)).collect();
            let k = k.min(grow.len()).min(drop.len());
            if k == 0 {
                return new;
            }
            // Largest |G| first; ties by position, so the choice is deterministic.
            grow.select_nth_unstable_by(k - 1, |&a, &b| grad[b].abs().total_cmp(&grad[a].abs()).then(a.cmp(&b)));
            drop.select_nth_unstable_by(k - 1, |&a, &b| sens(a).total_cmp(&sens(b)).then(a.cmp(&b)));
            for &i in &grow[..k] {
                new.set(i / cols, i % cols, true);
            }
            for &i in &drop[..k] {
                new.set(i / cols, i % cols, false);
            }
        }
        SparseFormat::NM { m, .. } => {
            // One candidate swap per group: (its best |G| among pruned, in, out).
            let mut swaps: Vec<(f32, usize, usize)> = Vec::new();
            for r in 0..rows {
                for g in (0..cols).step_by(m) {
                    let idx = |c: usize| r * cols + c;
                    let best_in = (g..g + m)
                        .filter(|&c| !old.get(r, c))
                        .max_by(|&a, &b| grad[idx(a)].abs().total_cmp(&grad[idx(b)].abs()).then(b.cmp(&a)));
                    let worst_out = (g..g + m)
                        .filter(|&c| old.get(r, c))
                        .min_by(|&a, &b| sens(idx(a)).total_cmp(&sens(idx(b))).then(a.cmp(&b)));
                    if let (Some(i), Some(o)) = (best_in, worst_out) {
                        swaps.push((grad[idx(i)].abs(), idx(i), idx(o)));
                    }
                }
            }
            let k = k.min(swaps.len());
            if k == 0 {
                return new;
            }
            swaps.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, i, o) in &swaps[..k] {
                new.set(i / cols, i % cols, true);
                new.set(o / cols, o % cols, false);
            }
        }
    }
    new
}

/// A vector laid out on `old`'s kept entries (row-major order) moved onto `new`'s: entries
/// kept by both keep their value, grown ones start at 0.
pub fn relayout(old: &BitMask, new: &BitMask, v: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(new.kept());
    let mut k = 0;
    for r in 0..old.rows() {
        for c in 0..old.cols() {
            let was = old.get(r, c);
            if new.get(r, c) {
                out.push(if was { v.get(k).copied().unwrap_or(0.0) } else { 0.0 });
            }
            if was {
                k += 1;
            }
        }
    }
    out
}

/// One evolution of `trainer`'s model (built by [`attach`], trained tensors from
/// [`params`]), after its current step: masks, values and optimizer moments move together.
pub fn evolve(trainer: &mut Trainer, data: &TrainData, opts: &SeftOptions) -> Result<Evolution> {
    let c = trainer.config.clone();
    let device = trainer.model.device().clone();
    let fraction = swap_fraction(opts.swap_fraction, trainer.step, c.steps);
    let dense = trainer.model.merged()?;
    let first = trainer.samples_seen;
    let grads = decoder_linear_gradients(
        &dense,
        opts.grad_batches.max(1),
        |i| data.batch(first + (i * c.batch) as u64, c.batch, c.seed, &device),
        &mut |_| {},
    )?;
    drop(dense);
    let mut evo = Evolution { step: trainer.step, fraction, swapped: 0, kept: 0 };
    for (i, (l, p, g)) in grads.into_iter().enumerate() {
        let name = format!("{}.values", super::module_name(l, p));
        if trainer.params.get(i).map(|(n, _)| n) != Some(&name) {
            return Err(Error::invalid(format!(
                "SEFT: trained tensor {i} is not {name}: was the model built by seft::attach?"
            )));
        }
        let Linear::Sparse(w) = trainer.model.layers[l].linear_mut(p) else {
            return Err(Error::invalid(format!("SEFT: {name} is not a sparse linear")));
        };
        let old = w.mask()?;
        let mut theta = w.to_dense()?.to_f32_vec()?;
        let k = (f64::from(fraction) * w.nnz() as f64).round() as usize;
        let new = evolve_mask(&theta, &g.to_f32_vec()?, &old, k, w.format());
        evo.swapped += (0..old.rows())
            .map(|r| (0..old.cols()).filter(|&c| new.get(r, c) && !old.get(r, c)).count())
            .sum::<usize>();
        evo.kept += w.nnz();
        new.apply(&mut theta)?;
        w.repack(&Tensor::from_f32(theta, [w.rows(), w.cols()], DType::F32, &crate::Device::cpu())?, &new)?;
        let state = trainer
            .optimizer
            .state_mut(i)
            .ok_or_else(|| Error::invalid(format!("SEFT: no optimizer state for {name}")))?;
        for t in [Some(&state.m), Some(&state.v), state.master.as_ref()].into_iter().flatten() {
            let moved = relayout(&old, &new, &t.to_f32_vec()?);
            t.copy_from(&Tensor::from_f32(moved, t.shape().clone(), t.dtype(), t.device())?)?;
        }
    }
    Ok(evo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_fraction_follows_the_cosine() {
        assert_eq!(swap_fraction(0.2, 0, 100), 0.2);
        assert!((swap_fraction(0.2, 50, 100) - 0.1).abs() < 1e-7);
        assert!(swap_fraction(0.2, 100, 100).abs() < 1e-7);
    }

    /// Hand-worked 2×4 case: unstructured keeps the count, grows by |G|, drops by |θ·G|.
    #[test]
    fn unstructured_swap_by_hand() {
        let old = BitMask::from_fn(2, 4, |r, c| (r + c) % 2 == 0); // kept: (0,0) (0,2) (1,1) (1,3)
        let theta = [1.0, 0.0, 0.1, 0.0, 0.0, 2.0, 0.0, 3.0];
        let grad = [1.0, 5.0, 1.0, 0.5, 4.0, 1.0, 0.1, 0.1];
        // Sensitivities of kept: (0,0) 1, (0,2) 0.1, (1,1) 2, (1,3) 0.3 → drop (0,2), (1,3).
        // Pruned |G|: (0,1) 5, (0,3) 0.5, (1,0) 4, (1,2) 0.1 → grow (0,1), (1,0).
        let new = evolve_mask(&theta, &grad, &old, 2, SparseFormat::Bitmask);
        let kept: Vec<(usize, usize)> = (0..8).map(|i| (i / 4, i % 4)).filter(|&(r, c)| new.get(r, c)).collect();
        assert_eq!(kept, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
        // State moves with the mask: (0,0) and (1,1) keep theirs, grown start at 0.
        assert_eq!(relayout(&old, &new, &[10.0, 20.0, 30.0, 40.0]), vec![10.0, 0.0, 0.0, 30.0]);
    }

    /// N:M swaps stay inside a group: every group keeps N after evolution.
    #[test]
    fn nm_swaps_keep_every_group_at_n() {
        let (rows, cols) = (3, 16);
        let old = BitMask::from_fn(rows, cols, |_, c| c % 4 < 2);
        let theta: Vec<f32> =
            (0..rows * cols).map(|i| if old.get(i / cols, i % cols) { (i % 7) as f32 + 0.5 } else { 0.0 }).collect();
        let grad: Vec<f32> = (0..rows * cols).map(|i| ((i * 13) % 11) as f32 - 5.0).collect();
        let new = evolve_mask(&theta, &grad, &old, 5, SparseFormat::NM { n: 2, m: 4 });
        let mut changed = 0;
        for r in 0..rows {
            for g in (0..cols).step_by(4) {
                assert_eq!((g..g + 4).filter(|&c| new.get(r, c)).count(), 2, "row {r} group {g}");
                changed += (g..g + 4).filter(|&c| new.get(r, c) && !old.get(r, c)).count();
            }
        }
        assert_eq!(changed, 5);
    }
}
