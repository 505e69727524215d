//! The model as the inference engine holds it: every decoder linear either dense or
//! compressed ([`SparseWeight`], bitmask or N:M), chosen at load by [`SparseMode`], and
//! applied as stored (`ops::infer_linear`: y = x·(W⊙M)ᵀ straight from values and mask).
//!
//! `Auto` compresses a linear whose fraction of exact zeros is at least
//! [`AUTO_MIN_SPARSITY`] — so a checkpoint pruned by any tool gets the sparse kernels — as
//! N:M when every group of M consecutive inputs of every row has at most N non-zeros (2:4
//! tried first, then 4:8), else as a bitmask. A linear that is already compressed
//! (`Linear::Sparse`) stays so; a masked-LoRA linear is merged (W⊙M + s·M⊙(B·A), zero
//! outside M) and then chosen like a dense one. The LM head and the embedding stay dense.

use crate::model::llama::{LlamaConfig, Proj};
use crate::nn::Linear;
use crate::ops;
use crate::sparse::{SparseFormat, SparseWeight};
use crate::{DType, Device, Error, Result, Tensor};

/// Fraction of exact zeros from which `Auto` stores a linear compressed. A bf16 bitmask
/// weight at sparsity s reads 2(1 − s) + 1/8 bytes per weight instead of 2, so below about
/// a quarter the sparse kernel's extra work is not paid back by the bytes it saves.
pub const AUTO_MIN_SPARSITY: f64 = 0.25;

/// Which decoder linears are stored compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseMode {
    /// Those whose fraction of zeros is at least [`AUTO_MIN_SPARSITY`].
    Auto,
    /// All of them (a linear without zeros becomes a bitmask keeping everything).
    On,
    /// None: every linear dense.
    Off,
}

impl SparseMode {
    /// `auto`, `on` or `off` (the `--sparse` flag).
    pub fn parse(s: &str) -> Result<SparseMode> {
        match s {
            "auto" => Ok(SparseMode::Auto),
            "on" => Ok(SparseMode::On),
            "off" => Ok(SparseMode::Off),
            other => Err(Error::invalid(format!("--sparse {other:?}: expected auto, on or off"))),
        }
    }
}

/// A linear as the engine applies it.
#[derive(Clone, Debug)]
pub enum InferLinear {
    /// Dense weight [out, in].
    Dense(Tensor),
    /// Compressed weight, applied from its values and mask.
    Sparse(SparseWeight),
}

impl InferLinear {
    /// y [N, out] = x [N, in] · Wᵀ.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            InferLinear::Dense(w) => ops::infer_linear::dense(x, w),
            InferLinear::Sparse(w) => ops::infer_linear::sparse(x, w),
        }
    }

    /// Bytes of weight data one forward reads (values, mask and offsets when compressed).
    pub fn bytes(&self) -> usize {
        match self {
            InferLinear::Dense(w) => w.size_in_bytes(),
            InferLinear::Sparse(w) => w.bytes(),
        }
    }

    /// `dense`, `bitmask` or `N:M`.
    pub fn format(&self) -> String {
        match self {
            InferLinear::Dense(_) => "dense".into(),
            InferLinear::Sparse(w) => format_name(w.format()),
        }
    }
}

/// `bitmask` or `N:M`.
pub fn format_name(f: SparseFormat) -> String {
    match f {
        SparseFormat::Bitmask => "bitmask".into(),
        SparseFormat::NM { n, m } => format!("{n}:{m}"),
    }
}

/// One decoder layer's weights for inference.
#[derive(Clone, Debug)]
pub struct InferLayer {
    /// RMSNorm weight before attention \[dim\].
    pub input_norm: Tensor,
    /// RMSNorm weight before the MLP \[dim\].
    pub post_norm: Tensor,
    /// q, k, v, o, gate, up, down in [`Proj::ALL`] order.
    pub linears: [InferLinear; 7],
}

impl InferLayer {
    /// The projection `p`.
    pub fn linear(&self, p: Proj) -> &InferLinear {
        let i = Proj::ALL.iter().position(|&q| q == p).expect("Proj::ALL lists every projection");
        &self.linears[i]
    }
}

/// What was chosen for one decoder linear (the `--json` report's `linears`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinearChoice {
    /// Decoder layer.
    pub layer: usize,
    /// Projection (its short name, as `Proj::short` gives it).
    pub proj: String,
    /// `dense`, `bitmask` or `N:M`.
    pub format: String,
    /// Fraction of the weight's entries that are zero (pruned).
    pub sparsity: f64,
    /// Bytes one forward reads.
    pub bytes: usize,
}

/// A LLaMA model for generation: embedding, decoder layers, final norm, LM head.
#[derive(Clone, Debug)]
pub struct InferModel {
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// Token embedding [vocab, dim].
    pub embed: Tensor,
    /// Decoder layers.
    pub layers: Vec<InferLayer>,
    /// Final norm \[dim\].
    pub norm: Tensor,
    /// LM head [vocab, dim]; `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
    /// The choice made for every decoder linear, layer by layer in [`Proj::ALL`] order.
    pub choices: Vec<LinearChoice>,
    /// The CPU step's threads, kept between steps (a clone starts its own).
    pub(super) crew: super::team::Crew,
}

impl InferModel {
    /// Takes `model`'s weights (layer by layer, so the dense and chosen forms of one layer
    /// at most coexist) and stores each decoder linear as `mode` says.
    pub fn new(model: crate::model::llama::Llama, mode: SparseMode) -> Result<InferModel> {
        let crate::model::llama::Llama { config, embed, layers, norm, lm_head } = model;
        let mut out = Vec::with_capacity(layers.len());
        let mut choices = Vec::with_capacity(layers.len() * 7);
        for (l, layer) in layers.into_iter().enumerate() {
            let mut linears = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (linear, sparsity) = choose(layer.linear(p), mode)?;
                choices.push(LinearChoice {
                    layer: l,
                    proj: p.short().to_string(),
                    format: linear.format(),
                    sparsity,
                    bytes: linear.bytes(),
                });
                linears.push(linear);
            }
            let linears: [InferLinear; 7] = linears.try_into().expect("seven projections");
            out.push(InferLayer { input_norm: layer.input_norm, post_norm: layer.post_norm, linears });
        }
        let model = InferModel { config, embed, layers: out, norm, lm_head, choices, crew: Default::default() };
        model.advise_huge_pages()?;
        Ok(model)
    }

    /// The weights on the CPU (embedding, head, every linear's values and mask or positions)
    /// moved onto huge pages where the kernel allows ([`crate::device::cpu::advise_huge_pages`]).
    fn advise_huge_pages(&self) -> Result<()> {
        let mut tensors: Vec<&Tensor> = vec![&self.embed];
        tensors.extend(self.lm_head.as_ref());
        for layer in &self.layers {
            for linear in &layer.linears {
                match linear {
                    InferLinear::Dense(t) => tensors.push(t),
                    InferLinear::Sparse(w) => tensors.extend([w.values(), w.meta()]),
                }
            }
        }
        for t in tensors.into_iter().filter(|t| matches!(t.device(), Device::Cpu(_))) {
            let storage = t.read()?;
            let bytes: &[u8] = match t.dtype() {
                DType::F32 => bytemuck::cast_slice(storage.cpu::<f32>()?),
                DType::BF16 => bytemuck::cast_slice(storage.cpu::<half::bf16>()?),
                DType::F16 => bytemuck::cast_slice(storage.cpu::<half::f16>()?),
                DType::U32 => bytemuck::cast_slice(storage.cpu::<u32>()?),
                DType::U8 => storage.cpu::<u8>()?,
            };
            crate::device::cpu::advise_huge_pages(bytes);
        }
        Ok(())
    }

    /// The LM head [vocab, dim] (the embedding when tied).
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of weights one decode step reads: every decoder linear as stored, the norms
    /// and the LM head (the embedding contributes one row per token and is not counted).
    pub fn weight_bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.input_norm.size_in_bytes()
                    + l.post_norm.size_in_bytes()
                    + l.linears.iter().map(InferLinear::bytes).sum::<usize>()
            })
            .sum();
        layers + self.norm.size_in_bytes() + self.head().size_in_bytes()
    }

    /// Bytes of every weight the model holds (the embedding, and the LM head when it is not
    /// tied to it, counted once each; compressed linears as stored).
    pub fn resident_bytes(&self) -> usize {
        let untied_head = self.lm_head.as_ref().map_or(0, Tensor::size_in_bytes);
        self.weight_bytes_per_token() - self.head().size_in_bytes() + self.embed.size_in_bytes() + untied_head
    }
}

/// The form `mode` gives `linear`, and the linear's fraction of zero entries.
fn choose(linear: &Linear, mode: SparseMode) -> Result<(InferLinear, f64)> {
    if let (Linear::Sparse(w), false) = (linear, mode == SparseMode::Off) {
        let sparsity = 1.0 - w.nnz() as f64 / (w.rows() * w.cols()).max(1) as f64;
        return Ok((InferLinear::Sparse(w.clone()), sparsity));
    }
    let dense = linear.merged()?;
    let [rows, cols] = dense.shape().dims_n::<2>("infer linear")?;
    let values = dense.to_f32_vec()?;
    let zeros = values.iter().filter(|&&v| v == 0.0).count();
    let sparsity = zeros as f64 / values.len().max(1) as f64;
    let format = match mode {
        SparseMode::Off => None,
        SparseMode::Auto if sparsity < AUTO_MIN_SPARSITY => None,
        SparseMode::Auto | SparseMode::On => Some(detect_format(&values, rows, cols)),
    };
    Ok(match format {
        None => (InferLinear::Dense(dense), sparsity),
        Some(f) => (InferLinear::Sparse(SparseWeight::from_dense(&dense, f)?), sparsity),
    })
}

/// 2:4 or 4:8 when the zeros of `values` [rows, cols] form that pattern (every group of M
/// consecutive entries of a row has at most N non-zeros), else bitmask.
pub fn detect_format(values: &[f32], rows: usize, cols: usize) -> SparseFormat {
    for (n, m) in [(2, 4), (4, 8)] {
        if !cols.is_multiple_of(m) || rows * cols != values.len() {
            continue;
        }
        let fits = values.chunks_exact(m).all(|group| group.iter().filter(|&&v| v != 0.0).count() <= n);
        if fits {
            return SparseFormat::NM { n, m };
        }
    }
    SparseFormat::Bitmask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nm_only_when_every_group_fits() {
        // 2 rows × 8: every group of 4 keeps at most 2 → 2:4.
        let two_four = [1., 0., 2., 0., 0., 0., 3., 4., 0., 5., 0., 6., 7., 0., 0., 0.];
        assert_eq!(detect_format(&two_four, 2, 8), SparseFormat::NM { n: 2, m: 4 });
        // One group of 4 keeps 3, but every group of 8 keeps at most 4 → 4:8.
        let four_eight = [1., 2., 3., 0., 0., 0., 0., 0., 0., 5., 0., 6., 7., 0., 0., 0.];
        assert_eq!(detect_format(&four_eight, 2, 8), SparseFormat::NM { n: 4, m: 8 });
        // A group of 8 keeps 5 → no N:M.
        let none = [1., 2., 3., 0., 4., 5., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.];
        assert_eq!(detect_format(&none, 2, 8), SparseFormat::Bitmask);
        // Columns not a multiple of 4: never N:M, however sparse.
        assert_eq!(detect_format(&[0., 0., 1., 0., 0., 1.], 2, 3), SparseFormat::Bitmask);
    }

    #[test]
    fn sparse_mode_names() {
        assert_eq!(SparseMode::parse("auto").unwrap(), SparseMode::Auto);
        assert_eq!(SparseMode::parse("off").unwrap(), SparseMode::Off);
        assert!(SparseMode::parse("yes").unwrap_err().to_string().contains("--sparse"));
    }
}
