//! LLaMA hyper-parameters, read from GGUF metadata (`llama.*` keys) or a Hugging Face
//! `config.json`, and written back as HF JSON.

use serde::{Deserialize, Serialize};

use crate::io::gguf::GgufFile;
use crate::{Error, Result};

/// Shape and numerics of a LLaMA decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width (dim).
    pub hidden_size: usize,
    /// SwiGLU hidden width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    head_dim: Option<usize>,
    model_type: Option<String>,
}

impl LlamaConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks the numbers are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 || self.num_hidden_layers == 0 {
            return bad(format!("zero-sized dimension in {self:?}"));
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 || self.rope_theta.is_nan() || self.rope_theta <= 0.0
        {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    /// From GGUF metadata (`general.architecture` must be "llama").
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::Config(format!("{}: architecture '{arch}' is not llama", f.path().display())));
        }
        let u = |k: &str| f.get_u64(&format!("llama.{k}")).map(|v| v as usize);
        let vocab_size = match f.get_u64("llama.vocab_size") {
            Ok(v) => v as usize,
            Err(_) => f.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let heads = u("attention.head_count")?;
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size: u("embedding_length")?,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: u("attention.head_count_kv").unwrap_or(heads),
            rms_norm_eps: f.get_f32("llama.attention.layer_norm_rms_epsilon")? as f64,
            rope_theta: f.get_f32("llama.rope.freq_base").map(|v| v as f64).unwrap_or(10000.0),
            max_position_embeddings: u("context_length").unwrap_or(2048),
            tie_word_embeddings: f.tensor_info("output.weight").is_none(),
        };
        if let Ok(rope_dims) = u("rope.dimension_count") {
            if rope_dims != cfg.head_dim() {
                return Err(Error::Config(format!(
                    "partial RoPE ({rope_dims} of {} dims) is not supported",
                    cfg.head_dim()
                )));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// From the text of a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        if let Some(t) = &hf.model_type {
            if t != "llama" {
                return Err(Error::Config(format!("model_type '{t}' is not llama")));
            }
        }
        let cfg = LlamaConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: hf.rope_theta.unwrap_or(10000.0),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        };
        if let Some(hd) = hf.head_dim {
            if hd != cfg.head_dim() {
                return Err(Error::Config(format!("head_dim {hd} != hidden_size / heads = {}", cfg.head_dim())));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// A Hugging Face `config.json` for this model (LlamaForCausalLM).
    pub fn to_hf_json(&self) -> String {
        let v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": "float32",
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// LLaMA-2-7B shapes (for memory plans and GPU benchmarks with random weights).
    pub fn llama2_7b() -> Self {
        LlamaConfig {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
        }
    }

    /// A tiny model for unit tests (GQA, tied embeddings).
    pub fn tiny() -> Self {
        LlamaConfig {
            vocab_size: 61,
            hidden_size: 24,
            intermediate_size: 40,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
        }
    }
}
