//! The LLaMA decoder: embedding → L × [x += o(attn(rope(q), rope(k), v)) of rms_norm(x);
//! x += down(silu(gate(h))·up(h)) of h = rms_norm(x)] → rms_norm → LM head.
//! Shapes: ids [B, T] (u32) → hidden [B, T, dim] → logits [B, T, vocab].
//! q: [B, T, Hq, hd], k/v: [B, T, Hkv, hd] (hd = the config's head_dim, so Hq·hd may differ
//! from dim); RoPE in the Hugging Face rotate-half layout (GGUF Q/K rows are un-permuted on
//! load) with the config's inverse frequencies (scaling included).

use super::{LlamaConfig, Proj};
use crate::autograd::{checkpoint, Tape};
use crate::nn::Linear;
use crate::ops::masked_lora::Heads;
use crate::ops::{self, cross_entropy};
use crate::{DType, Device, Error, Result, Tensor};

/// One decoder layer's weights.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// RMSNorm before attention, \[dim\].
    pub input_norm: Tensor,
    /// RMSNorm before the MLP, \[dim\].
    pub post_norm: Tensor,
    /// Query projection [Hq·hd, dim].
    pub q: Linear,
    /// Key projection [Hkv·hd, dim].
    pub k: Linear,
    /// Value projection [Hkv·hd, dim].
    pub v: Linear,
    /// Output projection [dim, Hq·hd].
    pub o: Linear,
    /// Gate projection [hidden, dim].
    pub gate: Linear,
    /// Up projection [hidden, dim].
    pub up: Linear,
    /// Down projection [dim, hidden].
    pub down: Linear,
}

impl DecoderLayer {
    /// The projection `p`.
    pub fn linear(&self, p: Proj) -> &Linear {
        match p {
            Proj::Q => &self.q,
            Proj::K => &self.k,
            Proj::V => &self.v,
            Proj::O => &self.o,
            Proj::Gate => &self.gate,
            Proj::Up => &self.up,
            Proj::Down => &self.down,
        }
    }

    /// The projection `p`, mutably.
    pub fn linear_mut(&mut self, p: Proj) -> &mut Linear {
        match p {
            Proj::Q => &mut self.q,
            Proj::K => &mut self.k,
            Proj::V => &mut self.v,
            Proj::O => &mut self.o,
            Proj::Gate => &mut self.gate,
            Proj::Up => &mut self.up,
            Proj::Down => &mut self.down,
        }
    }

    /// x [B, T, dim] → x after this layer, recorded on `tape`.
    pub fn forward(&self, tape: Option<&mut Tape>, cfg: &LlamaConfig, x: &Tensor, pos_offset: usize) -> Result<Tensor> {
        self.forward_observed(tape, cfg, x, pos_offset, None)
    }

    /// [`Self::forward`], also showing `observe` the input of every linear: once per
    /// distinct input, with the projections that read it ([`LinearInput`]).
    pub fn forward_observed(
        &self,
        mut tape: Option<&mut Tape>,
        cfg: &LlamaConfig,
        x: &Tensor,
        pos_offset: usize,
        mut observe: Option<&mut LinearObserver<'_>>,
    ) -> Result<Tensor> {
        let [b, t, dim] = x.shape().dims_n::<3>("decoder layer")?;
        let (hq, hkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim());
        cfg.check_window(pos_offset.saturating_add(t))?;
        let eps = cfg.rms_norm_eps as f32;
        let inv_freq = cfg.rope_inv_freq();
        let mut seen = |which: LinearInput, input: &Tensor| match observe.as_deref_mut() {
            Some(f) => f(which, input),
            None => Ok(()),
        };

        let h = ops::rms_norm(tape.as_deref_mut(), x, &self.input_norm, eps)?;
        seen(LinearInput::AttnIn, &h)?;
        let heads = Heads { q: hq, kv: hkv, dim: hd };
        let [q, k, v] =
            Linear::qkv_rope(tape.as_deref_mut(), [&self.q, &self.k, &self.v], &h, heads, &inv_freq, pos_offset)?;
        let a = ops::attention::attention(tape.as_deref_mut(), &q, &k, &v)?;
        let a = ops::reshape(tape.as_deref_mut(), &a, [b, t, hq * hd])?;
        seen(LinearInput::AttnOut, &a)?;
        let a = self.o.forward(tape.as_deref_mut(), &a)?;
        let (x, h) = ops::add_rms_norm(tape.as_deref_mut(), x, &a, &self.post_norm, eps)?;
        seen(LinearInput::MlpIn, &h)?;
        let m = Linear::swiglu_pair(tape.as_deref_mut(), &self.gate, &self.up, &h)?;
        seen(LinearInput::MlpHidden, &m)?;
        let m = self.down.forward(tape.as_deref_mut(), &m)?;
        debug_assert_eq!(m.dims(), [b, t, dim]);
        ops::add(tape, &x, &m)
    }
}

/// A callback shown each distinct linear input of a decoder layer.
pub type LinearObserver<'a> = dyn FnMut(LinearInput, &Tensor) -> Result<()> + 'a;

/// The four distinct inputs of a decoder layer's seven linears.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearInput {
    /// rms_norm(x) before attention: read by q, k, v.
    AttnIn,
    /// The attention output: read by o.
    AttnOut,
    /// rms_norm(x) before the MLP: read by gate and up.
    MlpIn,
    /// silu(gate)·up: read by down.
    MlpHidden,
}

impl LinearInput {
    /// All four, in forward order.
    pub const ALL: [LinearInput; 4] =
        [LinearInput::AttnIn, LinearInput::AttnOut, LinearInput::MlpIn, LinearInput::MlpHidden];

    /// The projections that read this input.
    pub fn projections(self) -> &'static [Proj] {
        match self {
            LinearInput::AttnIn => &[Proj::Q, Proj::K, Proj::V],
            LinearInput::AttnOut => &[Proj::O],
            LinearInput::MlpIn => &[Proj::Gate, Proj::Up],
            LinearInput::MlpHidden => &[Proj::Down],
        }
    }
}

impl Proj {
    /// The input this projection reads.
    pub fn input(self) -> LinearInput {
        match self {
            Proj::Q | Proj::K | Proj::V => LinearInput::AttnIn,
            Proj::O => LinearInput::AttnOut,
            Proj::Gate | Proj::Up => LinearInput::MlpIn,
            Proj::Down => LinearInput::MlpHidden,
        }
    }
}

/// A LLaMA model: config and weights on one device, in one dtype (F32 or BF16).
#[derive(Clone, Debug)]
pub struct Llama {
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// Token embedding [vocab, dim].
    pub embed: Tensor,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm \[dim\].
    pub norm: Tensor,
    /// LM head [vocab, dim]; `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
}

/// Options of a forward pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    /// Keep only each decoder layer's input and recompute the layer in backward.
    pub checkpoint_layers: bool,
}

impl Llama {
    /// The LM head matrix [vocab, dim] (the embedding when tied).
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Weight dtype.
    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    fn check_ids(&self, ids: &Tensor) -> Result<(usize, usize)> {
        if ids.dtype() != DType::U32 {
            return Err(Error::DType { op: "llama forward", dtype: ids.dtype(), msg: "token ids must be u32" });
        }
        let [b, t] = ids.shape().dims_n::<2>("llama forward")?;
        if b == 0 || t == 0 {
            return Err(Error::BadShape { op: "llama forward", shape: ids.shape().clone(), msg: "empty batch".into() });
        }
        Ok((b, t))
    }

    /// Final hidden states [B, T, dim] (after the last norm) for ids [B, T].
    pub fn hidden(&self, mut tape: Option<&mut Tape>, ids: &Tensor, opts: ForwardOptions) -> Result<Tensor> {
        self.check_ids(ids)?;
        let mut x = ops::embedding::embedding(tape.as_deref_mut(), &self.embed, ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            if let Some(t) = tape.as_deref_mut() {
                t.set_scope(Some(&format!("layer {l}")));
            }
            x = if opts.checkpoint_layers {
                let (layer, cfg) = (layer.clone(), self.config.clone());
                checkpoint(tape.as_deref_mut(), &x, "decoder layer", move |tape, x| layer.forward(tape, &cfg, x, 0))?
            } else {
                layer.forward(tape.as_deref_mut(), &self.config, &x, 0)?
            };
        }
        if let Some(t) = tape.as_deref_mut() {
            t.set_scope(Some("head"));
        }
        ops::rms_norm(tape, &x, &self.norm, self.config.rms_norm_eps as f32)
    }

    /// Logits [B, T, vocab] for ids [B, T].
    pub fn forward(&self, mut tape: Option<&mut Tape>, ids: &Tensor, opts: ForwardOptions) -> Result<Tensor> {
        let h = self.hidden(tape.as_deref_mut(), ids, opts)?;
        ops::matmul_nt(tape, &h, self.head())
    }

    /// Mean next-token cross-entropy of ids [B, T] against targets [B, T] (u32; positions
    /// with [`cross_entropy::IGNORE_INDEX`] are not scored). A scalar F32 tensor.
    pub fn loss(
        &self,
        mut tape: Option<&mut Tape>,
        ids: &Tensor,
        targets: &Tensor,
        opts: ForwardOptions,
    ) -> Result<Tensor> {
        ids.shape().expect_eq("llama loss", targets.shape())?;
        let logits = self.forward(tape.as_deref_mut(), ids, opts)?;
        cross_entropy(tape, &logits, targets)
    }

    /// Sum of next-token losses and the number of scored positions for one window of
    /// tokens (predicting tokens[1..] from tokens[..n-1]); records nothing.
    pub fn window_loss_sum(&self, tokens: &[u32]) -> Result<(f64, usize)> {
        if tokens.len() < 2 {
            return Err(Error::invalid("a window needs at least two tokens"));
        }
        let t = tokens.len() - 1;
        let ids = Tensor::from_vec(tokens[..t].to_vec(), [1, t], self.device())?;
        let targets = Tensor::from_vec(tokens[1..].to_vec(), [1, t], self.device())?;
        let logits = self.forward(None, &ids, ForwardOptions::default())?;
        cross_entropy::forward_sum(&logits, &targets)
    }

    /// A model with random weights (normal, std 0.02 for matrices; norms 1 + N(0, 0.1²)),
    /// seeded, for tests and benchmarks.
    pub fn random(config: &LlamaConfig, dtype: DType, device: &Device, seed: u64) -> Result<Llama> {
        config.validate()?;
        let mut parts = std::collections::HashMap::new();
        for (i, part) in super::Part::all(config).into_iter().enumerate() {
            let shape = part.shape(config);
            let s = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            let t = if shape.len() == 1 {
                let noise = Tensor::randn(shape.clone(), 0.1, DType::F32, &Device::cpu(), s)?.to_f32_vec()?;
                Tensor::from_f32(noise.into_iter().map(|v| 1.0 + v).collect(), shape, dtype, device)?
            } else {
                Tensor::randn(shape, 0.02, dtype, device, s)?
            };
            parts.insert(part.hf_name(), t);
        }
        Llama::from_named(config.clone(), |part| {
            parts.remove(&part.hf_name()).ok_or_else(|| Error::invalid(format!("missing {}", part.hf_name())))
        })
    }

    /// Assembles a model from a source of named tensors (checked against the config's
    /// shapes).
    pub fn from_named(config: LlamaConfig, mut get: impl FnMut(&super::Part) -> Result<Tensor>) -> Result<Llama> {
        use super::Part;
        config.validate()?;
        let mut fetch = |part: Part| -> Result<Tensor> {
            let t = get(&part)?;
            let want = part.shape(&config);
            if t.dims() != want.as_slice() {
                return Err(Error::ShapeMismatch { op: "load weights", lhs: t.shape().clone(), rhs: want.into() });
            }
            Ok(t)
        };
        let embed = fetch(Part::Embed)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let input_norm = fetch(Part::InputNorm(l))?;
            let mut lin = |p| fetch(Part::Linear(l, p)).map(Linear::new);
            let (q, k, v, o) = (lin(Proj::Q)?, lin(Proj::K)?, lin(Proj::V)?, lin(Proj::O)?);
            let (gate, up, down) = (lin(Proj::Gate)?, lin(Proj::Up)?, lin(Proj::Down)?);
            layers.push(DecoderLayer { input_norm, post_norm: fetch(Part::PostNorm(l))?, q, k, v, o, gate, up, down });
        }
        let norm = fetch(Part::Norm)?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(fetch(Part::LmHead)?) };
        Ok(Llama { config, embed, layers, norm, lm_head })
    }

    /// Every weight with its part name, in [`super::Part::all`] order (the linears must be
    /// dense: merge masked-LoRA linears first).
    pub fn named_tensors(&self) -> Result<Vec<(super::Part, &Tensor)>> {
        use super::Part;
        let mut v = vec![(Part::Embed, &self.embed)];
        for (l, layer) in self.layers.iter().enumerate() {
            v.push((Part::InputNorm(l), &layer.input_norm));
            for p in Proj::ALL {
                v.push((Part::Linear(l, p), layer.linear(p).dense()?));
            }
            v.push((Part::PostNorm(l), &layer.post_norm));
        }
        v.push((Part::Norm, &self.norm));
        if let Some(h) = &self.lm_head {
            v.push((Part::LmHead, h));
        }
        Ok(v)
    }

    /// A copy on another device and/or dtype.
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Llama> {
        self.map_tensors(|_, t| {
            let t = t.to_device(device)?;
            if t.dtype() == dtype {
                Ok(t)
            } else {
                t.to_dtype(dtype)
            }
        })
    }

    /// A model whose every tensor is `f(part, tensor)` (same config).
    pub fn map_tensors(&self, mut f: impl FnMut(&super::Part, &Tensor) -> Result<Tensor>) -> Result<Llama> {
        let mut by_part: std::collections::HashMap<super::Part, Tensor> =
            self.named_tensors()?.into_iter().map(|(p, t)| (p, t.clone())).collect();
        Llama::from_named(self.config.clone(), |part| {
            let t = by_part.remove(part).ok_or_else(|| Error::invalid(format!("no tensor for {part:?}")))?;
            f(part, &t)
        })
    }

    /// Number of parameters of the dense model (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        let (emb, head) = (self.embed.elem_count(), self.lm_head.as_ref().map_or(0, Tensor::elem_count));
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                l.input_norm.elem_count()
                    + l.post_norm.elem_count()
                    + Proj::ALL
                        .iter()
                        .map(|&p| {
                            let (o, i) = l.linear(p).dims();
                            o * i
                        })
                        .sum::<usize>()
            })
            .sum();
        emb + head + per_layer + self.norm.elem_count()
    }

    /// Per decoder layer: the fraction of its seven linears' weights that are pruned — the
    /// zeros of a dense weight, the entries outside the mask of a compressed one (a kept
    /// weight may be exactly 0, e.g. one SEFT has just grown).
    pub fn layer_sparsity(&self) -> Result<Vec<f64>> {
        self.layers
            .iter()
            .map(|layer| {
                let (mut pruned, mut total) = (0usize, 0usize);
                for p in Proj::ALL {
                    let (rows, cols) = layer.linear(p).dims();
                    let kept = match layer.linear(p).compressed() {
                        Some(w) => w.nnz(),
                        None => layer.linear(p).dense()?.to_f32_vec()?.iter().filter(|&&v| v != 0.0).count(),
                    };
                    pruned += rows * cols - kept;
                    total += rows * cols;
                }
                Ok(pruned as f64 / total.max(1) as f64)
            })
            .collect()
    }

    /// The fraction of all decoder-linear weights that are pruned (the mean of
    /// [`Llama::layer_sparsity`]: every layer has the same shapes).
    pub fn sparsity(&self) -> Result<f64> {
        let per_layer = self.layer_sparsity()?;
        Ok(per_layer.iter().sum::<f64>() / per_layer.len().max(1) as f64)
    }

    /// A dense model whose masked-LoRA linears are merged: W ← W⊙M + s·M⊙(B·A).
    pub fn merged(&self) -> Result<Llama> {
        let mut m = self.clone();
        for layer in &mut m.layers {
            for p in Proj::ALL {
                let w = layer.linear(p).merged()?;
                *layer.linear_mut(p) = Linear::new(w);
            }
        }
        Ok(m)
    }
}
