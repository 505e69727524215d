//! LoRS's adapter initialisation (LoRA-GA style; hyx1999/LoRS `pefts/lors/`): average the
//! dense gradient G_W = ∂L/∂W of every decoder linear of the pruned model over the first
//! training windows (the order training starts with), take the top-r right singular
//! vectors of each G_W by randomised SVD (sketch q = 4r, 4 power iterations, as their
//! `svd_lowrank(q = 4r, niter = 4)`), and set A [r, in] to them; B stays 0, so training
//! starts exactly from the pruned model.
//!
//! Memory: the gradients of all decoder linears are held at once (f32, the size of the
//! dense linears), so this runs before the training state exists; layer-at-a-time
//! gradient capture would bound it by one layer (not done yet).

use super::adapters::adapter_tensors;
use super::dense_grad::decoder_linear_gradients;
use super::trainer::TrainData;
use crate::linalg::top_right_singular_vectors;
use crate::model::llama::{Llama, Proj};
use crate::{Error, Result, Tensor};

/// Sets A of every adapter of `adapted` (built from `pruned`) from the gradient SVD over
/// `samples` windows of `data` (seeded order `seed`); `progress(done, total)` after each.
pub fn init_from_gradient_svd(
    pruned: &Llama,
    adapted: &Llama,
    data: &TrainData,
    samples: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    if samples == 0 {
        return Err(Error::invalid("LoRS initialisation needs at least one sample"));
    }
    let device = pruned.device().clone();
    let total = samples + adapted.layers.len() * Proj::ALL.len();
    let grads = decoder_linear_gradients(pruned, samples, |i| data.batch(i as u64, 1, seed, &device), &mut |i| {
        progress(i, total)
    })?;
    let adapters = adapter_tensors(adapted);
    if adapters.len() != grads.len() {
        return Err(Error::invalid("LoRS initialisation: the adapted model does not match the pruned one"));
    }
    for (k, (l, p, g)) in grads.iter().enumerate() {
        let (al, ap, a, _) = &adapters[k];
        debug_assert_eq!((al, ap), (l, p));
        let [rows, cols] = g.shape().dims_n::<2>("lors init")?;
        let r = a.dims()[0];
        let g: Vec<f64> = g.to_f32_vec()?.into_iter().map(f64::from).collect();
        let s = seed.wrapping_mul(31).wrapping_add(k as u64);
        let (v, _) = top_right_singular_vectors(&g, rows, cols, r, 4 * r, 4, s)?;
        let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
        a.copy_from(&Tensor::from_f32(v, [r, cols], a.dtype(), a.device())?)?;
        progress(samples + k + 1, total);
    }
    Ok(())
}
