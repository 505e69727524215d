//! Tensor names: Hugging Face (`model.layers.3.self_attn.q_proj.weight`) and GGUF
//! (`blk.3.attn_q.weight`), and the shape each must have for a config.

use super::LlamaConfig;

/// The seven linear projections of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    /// Query.
    Q,
    /// Key.
    K,
    /// Value.
    V,
    /// Attention output.
    O,
    /// SwiGLU gate.
    Gate,
    /// SwiGLU up.
    Up,
    /// SwiGLU down.
    Down,
}

impl Proj {
    /// All seven, in the order of the reference pruning code.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// Short name ("q_proj", ..., "down_proj").
    pub fn short(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    fn hf_module(self) -> &'static str {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            Proj::Gate | Proj::Up | Proj::Down => "mlp",
        }
    }

    fn gguf_part(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// Weight shape [out, in].
    pub fn shape(self, c: &LlamaConfig) -> [usize; 2] {
        let (d, kv, h) = (c.hidden_size, c.num_key_value_heads.saturating_mul(c.head_dim()), c.intermediate_size);
        let q = c.attention_width();
        match self {
            Proj::Q => [q, d],
            Proj::O => [d, q],
            Proj::K | Proj::V => [kv, d],
            Proj::Gate | Proj::Up => [h, d],
            Proj::Down => [d, h],
        }
    }

    /// HF name of layer `l`'s weight.
    pub fn hf_name(self, l: usize) -> String {
        format!("model.layers.{l}.{}.{}.weight", self.hf_module(), self.short())
    }
}

/// One named tensor of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Token embedding [vocab, dim].
    Embed,
    /// Layer `l`'s pre-attention norm \[dim\].
    InputNorm(usize),
    /// Layer `l`'s pre-MLP norm \[dim\].
    PostNorm(usize),
    /// Layer `l`'s projection.
    Linear(usize, Proj),
    /// Final norm \[dim\].
    Norm,
    /// LM head [vocab, dim] (absent when tied).
    LmHead,
}

impl Part {
    /// Hugging Face name.
    pub fn hf_name(&self) -> String {
        match self {
            Part::Embed => "model.embed_tokens.weight".into(),
            Part::InputNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            Part::PostNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Part::Linear(l, p) => p.hf_name(*l),
            Part::Norm => "model.norm.weight".into(),
            Part::LmHead => "lm_head.weight".into(),
        }
    }

    /// GGUF (llama.cpp) name.
    pub fn gguf_name(&self) -> String {
        match self {
            Part::Embed => "token_embd.weight".into(),
            Part::InputNorm(l) => format!("blk.{l}.attn_norm.weight"),
            Part::PostNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Part::Linear(l, p) => format!("blk.{l}.{}.weight", p.gguf_part()),
            Part::Norm => "output_norm.weight".into(),
            Part::LmHead => "output.weight".into(),
        }
    }

    /// Shape this tensor must have.
    pub fn shape(&self, c: &LlamaConfig) -> Vec<usize> {
        match self {
            Part::Embed | Part::LmHead => vec![c.vocab_size, c.hidden_size],
            Part::InputNorm(_) | Part::PostNorm(_) | Part::Norm => vec![c.hidden_size],
            Part::Linear(_, p) => p.shape(c).to_vec(),
        }
    }

    /// Every tensor of a model with this config, embedding first, in layer order.
    pub fn all(c: &LlamaConfig) -> Vec<Part> {
        let mut v = vec![Part::Embed];
        for l in 0..c.num_hidden_layers {
            v.push(Part::InputNorm(l));
            v.extend(Proj::ALL.iter().map(|&p| Part::Linear(l, p)));
            v.push(Part::PostNorm(l));
        }
        v.push(Part::Norm);
        if !c.tie_word_embeddings {
            v.push(Part::LmHead);
        }
        v
    }
}
