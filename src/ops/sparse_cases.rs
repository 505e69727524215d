//! Test cases shared by the ops on a compressed weight (`sparse_linear`, `masked_lora`): a
//! random weight W [output, input] pruned to a format's pattern (half of every row for a
//! bitmask, N of every M for N:M; [`crate::testing::random_mask`]), compressed, with random
//! activations x [lead.., input] and output gradients dy [lead.., output].

use crate::sparse::{BitMask, SparseFormat, SparseWeight};
use crate::testing::{random_f32, random_mask};
use crate::{DType, Device, Tensor};

/// One case: the compressed weight, its dense values, its mask, x and dy.
pub(crate) struct SparseCase {
    pub x: Tensor,
    pub w: SparseWeight,
    pub w_dense: Vec<f32>,
    pub mask: BitMask,
    pub dy: Tensor,
    /// Rows of x (the product of `lead`).
    pub tokens: usize,
}

/// A random tensor of `shape` in `dtype` on `dev` (uniform in ±1).
pub(crate) fn random_tensor(shape: Vec<usize>, dtype: DType, dev: &Device, seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(random_f32(n, 1.0, seed), shape, dtype, dev).unwrap()
}

/// The case for `format` at these sizes; x from `seed + 2`, dy from `seed + 5` (the seeds in
/// between are the callers' own, e.g. LoRA's A and B).
pub(crate) fn sparse_case(
    dev: &Device,
    dtype: DType,
    lead: &[usize],
    input: usize,
    output: usize,
    format: SparseFormat,
    seed: u64,
) -> SparseCase {
    let nm = match format {
        SparseFormat::Bitmask => None,
        SparseFormat::NM { n, m } => Some((n, m)),
    };
    let mask = random_mask(output, input, 0.5, nm, seed);
    let mut wv = random_f32(output * input, 0.5, seed + 1);
    mask.apply(&mut wv).unwrap();
    let wt = Tensor::from_f32(wv, [output, input], dtype, dev).unwrap();
    let w = SparseWeight::compress(&wt, &mask, format).unwrap();
    let with_last = |last: usize| lead.iter().copied().chain([last]).collect::<Vec<_>>();
    SparseCase {
        x: random_tensor(with_last(input), dtype, dev, seed + 2),
        w_dense: wt.to_f32_vec().unwrap(),
        w,
        mask,
        dy: random_tensor(with_last(output), dtype, dev, seed + 5),
        tokens: lead.iter().product(),
    }
}

/// A tensor's values as f64.
pub(crate) fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f32_vec().unwrap().into_iter().map(f64::from).collect()
}
