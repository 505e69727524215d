//! Dense gradients ∂L/∂W of every decoder linear of a dense model, summed in f32 over a
//! number of batches: what LoRS's initialisation (its SVD) and SEFT's growth (its largest
//! |∇| among pruned entries) read. All of them are held at once (the size of the dense
//! linears in f32), so callers use it outside the training step's memory.

use super::trainer::accumulate_f32;
use crate::autograd::{Grads, Tape};
use crate::model::llama::{ForwardOptions, Llama, Proj};
use crate::{Result, Tensor};

/// For every decoder linear (layer order, [`Proj::ALL`] within a layer): (layer, proj, Σ
/// over `count` batches of ∂L/∂W as f32 [out, in]). `batch(i)` gives batch i's (ids,
/// targets); `progress(i + 1)` runs after each. `model`'s decoder linears must be dense.
pub fn decoder_linear_gradients(
    model: &Llama,
    count: usize,
    mut batch: impl FnMut(usize) -> Result<(Tensor, Tensor)>,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<(usize, Proj, Tensor)>> {
    let weights: Vec<(usize, Proj, Tensor)> = model
        .layers
        .iter()
        .enumerate()
        .flat_map(|(l, layer)| Proj::ALL.into_iter().map(move |p| (l, p, layer.linear(p))))
        .map(|(l, p, lin)| Ok((l, p, lin.dense()?.clone())))
        .collect::<Result<_>>()?;
    let mut acc: Vec<Option<Tensor>> = vec![None; weights.len()];
    for i in 0..count {
        let (ids, targets) = batch(i)?;
        let mut tape = Tape::new();
        for (_, _, w) in &weights {
            tape.watch(w);
        }
        let loss = model.loss(Some(&mut tape), &ids, &targets, ForwardOptions { checkpoint_layers: true })?;
        let mut grads = Grads::new();
        tape.backward(&loss, &mut grads)?;
        accumulate_f32(&mut acc, &mut grads, weights.iter().map(|(_, _, w)| w))?;
        progress(i + 1);
    }
    Ok(weights.into_iter().zip(acc).filter_map(|((l, p, _), g)| g.map(|g| (l, p, g))).collect())
}
