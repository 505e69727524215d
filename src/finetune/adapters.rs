//! Turning a pruned model into a masked-LoRA model: every decoder linear's weight becomes a
//! frozen compressed base W⊙M ([`SparseWeight`], mask = its non-zeros, or N:M) with adapters
//! A [r, in] and B [out, r], s = alpha / r. Default initialisation as PEFT's LoRA: A
//! Kaiming-uniform with a = √5 (bound 1/√in), B = 0, so training starts exactly from the
//! pruned model.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::llama::{Llama, Proj};
use crate::nn::{Linear, MaskedLora};
use crate::ops::masked_lora::AdapterGrad;
use crate::sparse::{SparseFormat, SparseWeight};
use crate::{Error, Result, Tensor};

/// How adapters are attached.
#[derive(Clone, Copy, Debug)]
pub struct LoraOptions {
    /// Rank r.
    pub rank: usize,
    /// alpha (s = alpha / r).
    pub alpha: f32,
    /// Exact (SP-LoRA) or rearranged (LoRS) adapter gradients.
    pub grad: AdapterGrad,
    /// Layout of the compressed base.
    pub format: SparseFormat,
    /// Seed of A's initialisation.
    pub seed: u64,
    /// Standard deviation of a random B (0 = zero B, the default; tests use non-zero B so
    /// that A gets gradients too).
    pub b_std: f32,
}

impl LoraOptions {
    /// Rank 16, alpha 32, exact gradients, bitmask base, zero B.
    pub fn new(rank: usize, alpha: f32) -> Self {
        LoraOptions { rank, alpha, grad: AdapterGrad::Exact, format: SparseFormat::Bitmask, seed: 0, b_std: 0.0 }
    }
}

/// Kaiming-uniform (a = √5) values for a [rows, fan_in] matrix: U(−1/√fan_in, 1/√fan_in).
pub fn kaiming_uniform(rows: usize, fan_in: usize, seed: u64) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows * fan_in).map(|_| rng.random_range(-bound..bound)).collect()
}

/// The compressed base of a pruned linear in `format`: a dense weight compressed (mask =
/// its non-zeros, or N:M), a compressed one as it is (or re-laid out); an adapted linear
/// is an error.
pub fn pruned_base(linear: &Linear, format: SparseFormat) -> Result<SparseWeight> {
    match linear {
        Linear::Dense(w) => SparseWeight::from_dense(w, format),
        Linear::Sparse(w) if w.format() == format => Ok(w.clone()),
        Linear::Sparse(w) => SparseWeight::from_dense(&w.to_dense()?, format),
        Linear::MaskedLora(_) => Err(Error::invalid("this linear already has adapters")),
    }
}

/// A copy of `model` whose decoder linears are masked-LoRA linears over their compressed
/// pruned weights (dense with zeros where pruned, or already compressed; not adapted).
pub fn attach_masked_lora(model: &Llama, opts: LoraOptions) -> Result<Llama> {
    if opts.rank == 0 {
        return Err(Error::invalid("LoRA rank must be at least 1"));
    }
    let mut out = model.clone();
    let (device, dtype) = (model.device().clone(), model.dtype());
    for (l, layer) in out.layers.iter_mut().enumerate() {
        for (i, p) in Proj::ALL.into_iter().enumerate() {
            let (rows, cols) = layer.linear(p).dims();
            let base = pruned_base(layer.linear(p), opts.format)?;
            let seed = opts.seed.wrapping_mul(7919).wrapping_add((l * 7 + i) as u64);
            let a = Tensor::from_f32(kaiming_uniform(opts.rank, cols, seed), [opts.rank, cols], dtype, &device)?;
            let b = if opts.b_std > 0.0 {
                Tensor::randn([rows, opts.rank], opts.b_std, dtype, &device, seed ^ 0x5eed)?
            } else {
                Tensor::zeros([rows, opts.rank], dtype, &device)?
            };
            *layer.linear_mut(p) =
                Linear::MaskedLora(MaskedLora { base, a, b, scale: opts.alpha / opts.rank as f32, grad: opts.grad });
        }
    }
    Ok(out)
}

/// The trained tensors (A, B of every adapted linear), layer by layer in [`Proj::ALL`] order.
pub fn adapter_tensors(model: &Llama) -> Vec<(usize, Proj, Tensor, Tensor)> {
    let mut v = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        for p in Proj::ALL {
            if let Linear::MaskedLora(m) = layer.linear(p) {
                v.push((l, p, m.a.clone(), m.b.clone()));
            }
        }
    }
    v
}

/// The trained tensors by name, for the trainer and for files: `<module>.lora_A` and
/// `<module>.lora_B` with `<module>` the projection's HF name without `.weight`
/// (`model.layers.3.self_attn.q_proj`).
pub fn adapter_params(model: &Llama) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    for (l, p, a, b) in adapter_tensors(model) {
        let module = module_name(l, p);
        v.push((format!("{module}.lora_A"), a));
        v.push((format!("{module}.lora_B"), b));
    }
    v
}

/// `model.layers.<l>.<self_attn|mlp>.<p>_proj`.
pub fn module_name(layer: usize, p: Proj) -> String {
    let w = p.hf_name(layer);
    w.strip_suffix(".weight").unwrap_or(&w).to_string()
}
