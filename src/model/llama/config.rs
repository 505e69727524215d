//! LLaMA hyper-parameters, read from a Hugging Face `config.json` (as transformers 4.x and
//! 5.x write it, `model_type` `llama` or `mistral`) or from GGUF metadata (`llama.*`), and
//! written back as HF JSON.
//!
//! # The rule: every key is read, known to be harmless, or refused
//! A key that changes the numbers is implemented or refused, never ignored: the loader
//! goes through every key of the file, and a key it does not know is refused by name (with
//! its value), since it cannot tell whether it matters. [`HF_CONFIG_KEYS`] and
//! [`GGUF_KEYS`] list every key with what is done with it; the tests walk both lists.
//!
//! [`HF_CONFIG_KEYS`] follows transformers 5.24.0: `configuration_utils.py`
//! (`PreTrainedConfig`: its fields, class attributes, what `__post_init__` renames or drops,
//! what `to_dict`/`to_diff_dict` write), `modeling_rope_utils.py`
//! (`RotaryEmbeddingConfigMixin`), `integrations/heterogeneity/configuration_utils.py`
//! (`per_layer_config`), `generation/configuration_utils.py` (the generation defaults a model
//! config drops), `integrations/ggml.py` (the keys of a config rebuilt from GGUF metadata),
//! `models/llama/configuration_llama.py` and `models/mistral/configuration_mistral.py`, each
//! key checked against `models/llama/modeling_llama.py`, `models/mistral/modeling_mistral.py`
//! and `modeling_utils.py`: a key is harmless only where those never use it for the forward
//! pass of LlamaForCausalLM / MistralForCausalLM. Keys that only transformers 4.x or other
//! writers (SmolLM, Qwen, transformers.js) put in LLaMA-shaped checkpoints are kept on the same
//! terms. Every float the forward uses in f32 must be a positive finite f32
//! ([`LlamaConfig::validate`]).
//!
//! RoPE, as transformers computes it (f32): `inv_freq_i = 1 / θ^(2i/d)`, i < d/2, then
//! - `default`: as is;
//! - `linear` (factor f): `inv_freq / f`;
//! - `llama3` (f, low l, high h, original context c): with `wavelen = 2π / inv_freq`,
//!   `inv_freq / f` where `wavelen > c/l`, unchanged where `wavelen < c/h`, and in between
//!   `(1 − s)·inv_freq/f + s·inv_freq` with `s = (c/wavelen − l) / (h − l)`;
//! - `dynamic` (NTK): identical to `default` while every position is below
//!   `max_position_embeddings` (transformers recomputes θ only beyond it), so it is
//!   accepted for windows up to that length and refused beyond;
//! - GGUF `rope_freqs.weight` (llama.cpp's frequency factors φ): `inv_freq / φ`.
//!
//! `yarn`, `longrope` and any other type are refused (they also scale the attention).
//! Mistral's `sliding_window` w changes nothing while a window has at most w tokens;
//! a longer window is refused when it is run ([`LlamaConfig::check_window`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::io::gguf::{GgufFile, GgufValue};
use crate::{DType, Error, Result};

/// How the RoPE frequencies are scaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// `rope_type: default`: no scaling.
    Default,
    /// `rope_type: linear`: positions divided by `factor` (inv_freq / factor).
    Linear {
        /// The factor f.
        factor: f64,
    },
    /// `rope_type: dynamic` (NTK-aware): exact only below `max_position_embeddings`.
    Dynamic {
        /// The factor f (used by transformers beyond `max_position_embeddings` only).
        factor: f64,
    },
    /// `rope_type: llama3` (LLaMA-3.1/3.2).
    Llama3 {
        /// The factor f.
        factor: f64,
        /// l: wavelengths above c/l are divided by f.
        low_freq_factor: f64,
        /// h: wavelengths below c/h are kept.
        high_freq_factor: f64,
        /// c: the context length of pre-training.
        original_max_position_embeddings: usize,
    },
    /// GGUF `rope_freqs.weight`: per-frequency divisors φ_i, [head_dim / 2].
    FreqFactors(Vec<f32>),
}

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
    /// Per-head width when the file gives one that differs from `hidden_size /
    /// num_attention_heads` (`None`: that quotient). See [`LlamaConfig::head_dim`].
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency θ.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral's sliding attention window (tokens); windows longer than it are refused.
    pub sliding_window: Option<usize>,
}

/// What the loader does with a config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    /// Read: it sets a number of the model, or a value other than the accepted ones is
    /// refused.
    Read,
    /// Does not change the model's numbers (names, token ids for generation, training-time
    /// initialisation, generation defaults); accepted with any value.
    Harmless,
}

/// Every top-level key of a Hugging Face `config.json` the loader knows, with what it
/// does with it, grouped by where transformers 5.24.0 defines it (see the module doc). Any
/// other key is refused by name.
pub const HF_CONFIG_KEYS: &[(&str, KeyUse, &str)] = &[
    // LlamaConfig / MistralConfig fields (models/{llama,mistral}/configuration_*.py).
    ("vocab_size", KeyUse::Read, "required"),
    ("hidden_size", KeyUse::Read, "required"),
    ("intermediate_size", KeyUse::Read, "required"),
    ("num_hidden_layers", KeyUse::Read, "required"),
    ("num_attention_heads", KeyUse::Read, "required"),
    ("num_key_value_heads", KeyUse::Read, "default: num_attention_heads (Mistral, when absent: 8)"),
    ("head_dim", KeyUse::Read, "default: hidden_size / num_attention_heads"),
    ("hidden_act", KeyUse::Read, "\"silu\" (or its alias \"swish\") only"),
    ("max_position_embeddings", KeyUse::Read, "default 2048 (Mistral: 131072)"),
    ("rms_norm_eps", KeyUse::Read, "default 1e-6"),
    ("tie_word_embeddings", KeyUse::Read, "default false"),
    ("rope_parameters", KeyUse::Read, "transformers 5.x form: rope_type, rope_theta and the scaling's parameters"),
    ("attention_bias", KeyUse::Read, "false only"),
    ("mlp_bias", KeyUse::Read, "false only"),
    ("attention_dropout", KeyUse::Read, "0 only (no dropout is implemented)"),
    ("pretraining_tp", KeyUse::Read, "an integer ≥ 1: transformers 4.x splits the same products in slices"),
    ("sliding_window", KeyUse::Read, "null or a length; longer windows are refused (Mistral, when absent: 4096)"),
    ("initializer_range", KeyUse::Harmless, "initialisation of new weights"),
    ("use_cache", KeyUse::Harmless, "KV cache in generation"),
    ("bos_token_id", KeyUse::Harmless, "generation (the tokenizer's files decide)"),
    ("eos_token_id", KeyUse::Harmless, "generation (the tokenizer's files decide)"),
    (
        "pad_token_id",
        KeyUse::Harmless,
        "the embedding's padding_idx: that row is zero at initialisation and gets no gradient; loaded, it is used as is",
    ),
    // PreTrainedConfig fields and class attributes (configuration_utils.py).
    ("model_type", KeyUse::Read, "\"llama\" or \"mistral\" (absent: llama)"),
    ("architectures", KeyUse::Read, "LlamaForCausalLM or MistralForCausalLM"),
    ("dtype", KeyUse::Read, "float32, bfloat16 or float16 (the default load dtype; rewritten on export)"),
    ("transformers_version", KeyUse::Harmless, "writer version"),
    ("output_hidden_states", KeyUse::Harmless, "outputs"),
    ("return_dict", KeyUse::Harmless, "outputs"),
    ("chunk_size_feed_forward", KeyUse::Harmless, "memory chunking; the Llama and Mistral models never read it"),
    ("is_encoder_decoder", KeyUse::Harmless, "encoder-decoder wiring, for generation"),
    ("id2label", KeyUse::Harmless, "classification heads"),
    ("label2id", KeyUse::Harmless, "classification heads"),
    ("problem_type", KeyUse::Harmless, "classification heads"),
    // Arguments PreTrainedConfig.__post_init__ renames, converts or drops, and the private
    // attributes it keeps (configuration_utils.py).
    ("torch_dtype", KeyUse::Read, "older name of dtype, as dtype"),
    ("rope_theta", KeyUse::Read, "transformers 4.x form; default 10000"),
    ("rope_scaling", KeyUse::Read, "transformers 4.x form: null, or type/rope_type and parameters"),
    ("partial_rotary_factor", KeyUse::Read, "1 only"),
    (
        "original_max_position_embeddings",
        KeyUse::Read,
        "llama3 RoPE's original context (transformers 5 puts it in rope_parameters); must agree with the one there",
    ),
    ("per_layer_config", KeyUse::Read, "null or {} only (per-layer overrides are not implemented)"),
    ("num_labels", KeyUse::Harmless, "classification heads"),
    ("name_or_path", KeyUse::Harmless, "where the model came from"),
    ("_name_or_path", KeyUse::Harmless, "where the model came from (written by transformers 4.x)"),
    ("_commit_hash", KeyUse::Harmless, "hub revision, dropped on load"),
    ("output_attentions", KeyUse::Harmless, "outputs (selects eager attention: the same function)"),
    ("_output_attentions", KeyUse::Harmless, "outputs"),
    ("attn_implementation", KeyUse::Harmless, "eager, sdpa or flash kernels of the same attention"),
    ("_attn_implementation", KeyUse::Harmless, "eager, sdpa or flash kernels of the same attention"),
    ("_attn_implementation_internal", KeyUse::Harmless, "ignored on load"),
    ("experts_implementation", KeyUse::Harmless, "mixture-of-experts kernels; no experts here"),
    ("_experts_implementation", KeyUse::Harmless, "mixture-of-experts kernels; no experts here"),
    ("_experts_implementation_internal", KeyUse::Harmless, "ignored on load"),
    ("_post_init_done", KeyUse::Harmless, "construction bookkeeping"),
    // Generation defaults: GenerationConfig._get_default_generation_params(), dropped from
    // the model config on load (generation/configuration_utils.py).
    ("max_length", KeyUse::Harmless, "generation default"),
    ("min_length", KeyUse::Harmless, "generation default"),
    ("do_sample", KeyUse::Harmless, "generation default"),
    ("early_stopping", KeyUse::Harmless, "generation default"),
    ("num_beams", KeyUse::Harmless, "generation default"),
    ("temperature", KeyUse::Harmless, "generation default"),
    ("top_k", KeyUse::Harmless, "generation default"),
    ("top_p", KeyUse::Harmless, "generation default"),
    ("typical_p", KeyUse::Harmless, "generation default"),
    ("repetition_penalty", KeyUse::Harmless, "generation default"),
    ("length_penalty", KeyUse::Harmless, "generation default"),
    ("no_repeat_ngram_size", KeyUse::Harmless, "generation default"),
    ("encoder_no_repeat_ngram_size", KeyUse::Harmless, "generation default"),
    ("bad_words_ids", KeyUse::Harmless, "generation default"),
    ("num_return_sequences", KeyUse::Harmless, "generation default"),
    ("output_scores", KeyUse::Harmless, "generation default"),
    ("return_dict_in_generate", KeyUse::Harmless, "generation default"),
    ("forced_bos_token_id", KeyUse::Harmless, "generation default"),
    ("forced_eos_token_id", KeyUse::Harmless, "generation default"),
    ("remove_invalid_values", KeyUse::Harmless, "generation default"),
    ("exponential_decay_length_penalty", KeyUse::Harmless, "generation default"),
    ("suppress_tokens", KeyUse::Harmless, "generation default"),
    ("begin_suppress_tokens", KeyUse::Harmless, "generation default"),
    ("epsilon_cutoff", KeyUse::Harmless, "generation default"),
    ("eta_cutoff", KeyUse::Harmless, "generation default"),
    ("encoder_repetition_penalty", KeyUse::Harmless, "generation default"),
    ("num_assistant_tokens", KeyUse::Harmless, "generation default"),
    ("num_assistant_tokens_schedule", KeyUse::Harmless, "generation default"),
    ("assistant_confidence_threshold", KeyUse::Harmless, "generation default"),
    ("assistant_lookbehind", KeyUse::Harmless, "generation default"),
    ("target_lookbehind", KeyUse::Harmless, "generation default"),
    ("num_beam_groups", KeyUse::Harmless, "generation default (transformers 4.x)"),
    ("diversity_penalty", KeyUse::Harmless, "generation default (transformers 4.x)"),
    // What transformers writes for a config rebuilt from GGUF metadata (integrations/ggml.py,
    // GGUF_CONFIG_MAPPING: general.name, tokenizer.ggml.unknown_token_id).
    ("_model_name_or_path", KeyUse::Harmless, "the GGUF file's general.name"),
    ("unk_token_id", KeyUse::Harmless, "token id"),
    // PreTrainedConfig attributes of transformers 4.x, not read by the 5.x Llama or Mistral
    // models either (set as plain attributes when present).
    ("torchscript", KeyUse::Harmless, "export"),
    ("use_bfloat16", KeyUse::Harmless, "legacy TF flag"),
    ("tf_legacy_loss", KeyUse::Harmless, "legacy TF flag"),
    ("finetuning_task", KeyUse::Harmless, "classification heads"),
    ("pruned_heads", KeyUse::Harmless, "a pruned head would show as a shape mismatch"),
    ("is_decoder", KeyUse::Harmless, "encoder-decoder wiring"),
    ("add_cross_attention", KeyUse::Harmless, "encoder-decoder wiring"),
    ("cross_attention_hidden_size", KeyUse::Harmless, "encoder-decoder wiring"),
    ("tie_encoder_decoder", KeyUse::Harmless, "encoder-decoder wiring"),
    ("prefix", KeyUse::Harmless, "generation"),
    ("task_specific_params", KeyUse::Harmless, "generation"),
    ("tokenizer_class", KeyUse::Harmless, "tokenizer name"),
    ("sep_token_id", KeyUse::Harmless, "token id"),
    ("decoder_start_token_id", KeyUse::Harmless, "token id"),
    // Other writers' keys on LLaMA-shaped checkpoints.
    ("layer_types", KeyUse::Read, "every layer \"full_attention\" only"),
    ("rope_interleaved", KeyUse::Read, "false only (SmolLM's key)"),
    ("use_sliding_window", KeyUse::Read, "false only (Qwen's switch)"),
    ("max_window_layers", KeyUse::Harmless, "only with use_sliding_window (refused)"),
    ("is_llama_config", KeyUse::Harmless, "SmolLM's marker"),
    ("transformers.js_config", KeyUse::Harmless, "transformers.js settings"),
    ("quantization_config", KeyUse::Read, "refused: quantized checkpoints are not read"),
];

/// The largest `head_dim` accepted: far above any LLaMA-family model's (64 to 256), low
/// enough that the RoPE frequencies `validate` computes stay small.
pub const MAX_HEAD_DIM: usize = 1 << 16;

/// Keys inside `rope_parameters` / `rope_scaling`, for the accepted RoPE types.
pub const HF_ROPE_KEYS: &[&str] = &[
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "partial_rotary_factor",
];

/// Every GGUF metadata key the model loader knows. The tokenizer's `tokenizer.*` keys are
/// [`crate::io::Tokenizer::from_gguf`]'s; `general.*` (the file's description) and
/// `quantize.*` (how llama-quantize made it) never change the numbers. Any other key, in
/// any other namespace (`split.*` of a split file, another architecture's), is refused.
pub const GGUF_KEYS: &[(&str, KeyUse, &str)] = &[
    ("general.architecture", KeyUse::Read, "\"llama\" only"),
    ("llama.vocab_size", KeyUse::Read, "default: the tokenizer's token count"),
    ("llama.embedding_length", KeyUse::Read, "required"),
    ("llama.feed_forward_length", KeyUse::Read, "required"),
    ("llama.block_count", KeyUse::Read, "required"),
    ("llama.attention.head_count", KeyUse::Read, "required"),
    ("llama.attention.head_count_kv", KeyUse::Read, "default: head_count"),
    ("llama.attention.key_length", KeyUse::Read, "the head width (must equal value_length)"),
    ("llama.attention.value_length", KeyUse::Read, "the head width (must equal key_length)"),
    ("llama.attention.layer_norm_rms_epsilon", KeyUse::Read, "required"),
    ("llama.attention.sliding_window", KeyUse::Read, "longer windows are refused"),
    ("llama.rope.freq_base", KeyUse::Read, "default 10000"),
    ("llama.rope.dimension_count", KeyUse::Read, "the head width only (partial RoPE is refused)"),
    ("llama.rope.scaling.type", KeyUse::Read, "none or linear (yarn and others are refused)"),
    ("llama.rope.scaling.factor", KeyUse::Read, "linear factor (llama.cpp applies it with type none too)"),
    ("llama.rope.scale_linear", KeyUse::Read, "older name of the linear factor"),
    ("llama.rope.scaling.original_context_length", KeyUse::Harmless, "not used by linear scaling"),
    ("llama.rope.scaling.finetuned", KeyUse::Harmless, "a flag"),
    ("llama.context_length", KeyUse::Read, "default 2048"),
    ("llama.expert_count", KeyUse::Read, "0 only (mixture of experts is refused)"),
    ("llama.expert_used_count", KeyUse::Read, "0 only"),
];

/// A config key's value shown in an error: its JSON, cut to 80 characters.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// The HF dtype name's [`DType`].
pub fn dtype_from_hf(name: &str) -> Option<DType> {
    match name {
        "float32" => Some(DType::F32),
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        _ => None,
    }
}

/// The HF name of a float dtype.
pub fn dtype_to_hf(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// Reads one config object, refusing by name: `origin` is the file it came from.
struct Reader<'a> {
    origin: &'a str,
    /// Prefix of the keys in errors: "" at the top level, "rope_parameters." inside it.
    prefix: String,
    map: &'a Map<String, Value>,
}

impl<'a> Reader<'a> {
    fn refuse(&self, key: &str, v: &Value, why: &str) -> Error {
        Error::Config(format!("{}: key '{}{key}' = {}: {why}", self.origin, self.prefix, shown(v)))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(self.refuse(key, v, "expected a positive integer")),
            },
        }
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| Error::Config(format!("{}: missing key '{key}'", self.origin)))
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.refuse(key, v, "expected a finite number")),
            },
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.refuse(key, v, "expected true or false")),
        }
    }

    /// Accepts the key only with `ok` values (absent or null is always accepted).
    fn only(&self, key: &str, ok: impl Fn(&Value) -> bool, why: &str) -> Result<()> {
        match self.get(key) {
            Some(v) if !ok(v) => Err(self.refuse(key, v, why)),
            _ => Ok(()),
        }
    }
}

impl LlamaConfig {
    /// Per-head width: `head_dim` when the file gives it, else `hidden_size /
    /// num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Width of the attention output, `num_attention_heads · head_dim` (the rows of q_proj
    /// and the columns of o_proj).
    pub fn attention_width(&self) -> usize {
        // Saturating: `validate` refuses widths whose products overflow.
        self.num_attention_heads.saturating_mul(self.head_dim())
    }

    /// The RoPE inverse frequencies [head_dim / 2] in f32, computed as transformers does
    /// (see the module doc).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        let theta = self.rope_theta as f32;
        let base: Vec<f32> = (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32)).collect();
        match &self.rope_scaling {
            RopeScaling::Default | RopeScaling::Dynamic { .. } => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / *factor as f32).collect(),
            RopeScaling::FreqFactors(phi) => base.iter().zip(phi).map(|(f, p)| f / p).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (f, l, h) = (*factor as f32, *low_freq_factor as f32, *high_freq_factor as f32);
                let c = *original_max_position_embeddings as f32;
                let (low_wavelen, high_wavelen) = (c / l, c / h);
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                base.iter()
                    .map(|&inv| {
                        // torch evaluates `scalar / tensor` as `reciprocal(tensor) * scalar`.
                        let wavelen = (1.0 / inv) * two_pi;
                        let scaled = if wavelen > low_wavelen { inv / f } else { inv };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            scaled
                        } else {
                            let smooth = ((1.0 / wavelen) * c - l) / (h - l);
                            (1.0 - smooth) * scaled / f + smooth * scaled
                        }
                    })
                    .collect()
            }
        }
    }

    /// The longest window this config computes exactly, and the key that limits it:
    /// Mistral's `sliding_window`, or `max_position_embeddings` under dynamic RoPE.
    pub fn max_window(&self) -> Option<(usize, &'static str)> {
        let dynamic = matches!(self.rope_scaling, RopeScaling::Dynamic { .. })
            .then_some((self.max_position_embeddings, "max_position_embeddings (with rope_type dynamic)"));
        let sliding = self.sliding_window.map(|w| (w, "sliding_window"));
        match (dynamic, sliding) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Refuses positions `0..end` that the config does not compute exactly (see
    /// [`LlamaConfig::max_window`]).
    pub fn check_window(&self, end: usize) -> Result<()> {
        match self.max_window() {
            Some((limit, key)) if end > limit => Err(Error::Config(format!(
                "a window of {end} positions exceeds {key} = {limit}: beyond it this model is not \
                 computed as configured (not implemented); use windows of at most {limit} tokens"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks the numbers are consistent and their products fit, and that every float the
    /// forward computes with in f32 ([`LlamaConfig::f32_parameters`]) is a positive finite
    /// f32, naming config.json's key and its value otherwise.
    pub fn validate(&self) -> Result<()> {
        self.validate_named(&|key| key.to_owned())
    }

    /// The floats the forward computes with in f32, by their config.json (transformers 5)
    /// names: RMSNorm's ε, RoPE's θ and the scaling's factors. `dynamic`'s factor is not
    /// among them (it applies beyond `max_position_embeddings` only, which is refused), nor
    /// are GGUF frequency factors (f32 already).
    pub fn f32_parameters(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)];
        match &self.rope_scaling {
            RopeScaling::Linear { factor } => v.push(("rope_parameters.factor", *factor)),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, .. } => v.extend([
                ("rope_parameters.factor", *factor),
                ("rope_parameters.low_freq_factor", *low_freq_factor),
                ("rope_parameters.high_freq_factor", *high_freq_factor),
            ]),
            RopeScaling::Default | RopeScaling::Dynamic { .. } | RopeScaling::FreqFactors(_) => {}
        }
        v
    }

    /// [`LlamaConfig::validate`], with the keys of [`LlamaConfig::f32_parameters`] named as
    /// the file being read names them (`name` maps config.json's names to the file's).
    fn validate_named(&self, name: &dyn Fn(&'static str) -> String) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 || self.num_hidden_layers == 0 {
            return bad(format!("zero-sized dimension in {self:?}"));
        }
        if self.num_attention_heads == 0
            || (self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads))
        {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        let hd = self.head_dim();
        if hd == 0 || !hd.is_multiple_of(2) {
            return bad(format!("head_dim {hd} must be even and non-zero for RoPE"));
        }
        // The RoPE frequencies (hd / 2 of them) are computed and checked below, before any
        // tensor is read: a damaged head_dim must not size that work.
        if hd > MAX_HEAD_DIM {
            return bad(format!(
                "head_dim {hd} exceeds {MAX_HEAD_DIM} (LLaMA-family models use 64 to 256): refused as damaged"
            ));
        }
        let sizes = [
            self.vocab_size.checked_mul(self.hidden_size),
            self.num_attention_heads.checked_mul(hd).and_then(|w| w.checked_mul(self.hidden_size)),
            self.intermediate_size.checked_mul(self.hidden_size),
        ];
        if sizes.iter().any(|s| s.is_none_or(|n| n.checked_mul(8).is_none())) {
            return bad(format!("dimensions overflow: {self:?}"));
        }
        // A finite f64 can be infinite (1e300) or 0 (1e-50) in f32: RMSNorm would then give 0
        // or NaN activations, and RoPE NaN angles.
        for (key, x) in self.f32_parameters() {
            let x32 = x as f32;
            if !(x32.is_finite() && x32 > 0.0) {
                let there = if x > 0.0 && x.is_finite() { format!(", where it is {x32:?}") } else { String::new() };
                return bad(format!(
                    "{} = {x:?}: must be a positive finite f32 (the forward computes with it in f32{there})",
                    name(key)
                ));
            }
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        match &self.rope_scaling {
            RopeScaling::Default | RopeScaling::Linear { .. } => {}
            RopeScaling::Dynamic { factor } if positive(*factor) => {}
            // The smoothing divides by h − l, in f32.
            RopeScaling::Llama3 { low_freq_factor: l, high_freq_factor: h, .. } if *h as f32 <= *l as f32 => {
                return bad(format!(
                    "{} = {h:?} must exceed {} = {l:?} (in f32)",
                    name("rope_parameters.high_freq_factor"),
                    name("rope_parameters.low_freq_factor")
                ));
            }
            RopeScaling::Llama3 { original_max_position_embeddings, .. } if *original_max_position_embeddings > 0 => {}
            RopeScaling::FreqFactors(phi) if phi.len() == hd / 2 && phi.iter().all(|&p| positive(p as f64)) => {}
            other => return bad(format!("invalid RoPE scaling {other:?} (head_dim {hd})")),
        }
        // Positive finite parameters can still overflow the frequencies (θ near f32::MAX, a
        // tiny factor).
        if let Some(i) = self.rope_inv_freq().iter().position(|f| !f.is_finite()) {
            let mut with: Vec<String> = (self.f32_parameters().into_iter())
                .filter(|(k, _)| *k != "rms_norm_eps")
                .map(|(k, x)| format!("{} = {x:?}", name(k)))
                .collect();
            if matches!(self.rope_scaling, RopeScaling::FreqFactors(_)) {
                with.push("the factors of rope_freqs.weight".into());
            }
            return bad(format!("RoPE frequency {i} of {} overflows f32 with {}", hd / 2, with.join(", ")));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window 0".into());
        }
        Ok(())
    }

    /// From GGUF metadata (`general.architecture` must be "llama"); `rope_freqs.weight`,
    /// when the file has it, holds the frequency factors.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let path = f.path().display().to_string();
        let refuse = |key: &str, v: &GgufValue, why: &str| {
            Error::Config(format!("{path}: metadata key '{key}' ({} {}): {why}", v.type_name(), gguf_shown(v)))
        };
        let arch = f.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::Config(format!("{path}: general.architecture '{arch}' is not llama")));
        }
        for (key, v) in f.metadata() {
            let described = key.starts_with("general.") && key != "general.architecture";
            if described || key.starts_with("tokenizer.") || key.starts_with("quantize.") {
                continue;
            }
            if !GGUF_KEYS.iter().any(|(k, _, _)| k == key) {
                return Err(refuse(key, v, "unknown key: it may change the model, so it is refused"));
            }
        }
        let opt = |k: &str| -> Result<Option<usize>> {
            match f.get(k) {
                None => Ok(None),
                Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                    Some(n) => Ok(Some(n)),
                    None => Err(refuse(k, v, "expected a non-negative integer")),
                },
            }
        };
        let req = |k: &str| -> Result<usize> {
            opt(k)?.ok_or_else(|| Error::format(f.path(), "GGUF", format!("missing metadata key '{k}'")))
        };
        let float = |k: &str| -> Result<Option<f64>> {
            match f.get(k) {
                None => Ok(None),
                Some(v) => {
                    v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| refuse(k, v, "expected a number"))
                }
            }
        };
        for k in ["llama.expert_count", "llama.expert_used_count"] {
            if let Some(n) = opt(k)?.filter(|&n| n > 0) {
                return Err(refuse(k, &GgufValue::U64(n as u64), "mixture of experts is not supported"));
            }
        }
        let vocab_size = match opt("llama.vocab_size")? {
            Some(v) => v,
            None => f.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let heads = req("llama.attention.head_count")?;
        let hidden = req("llama.embedding_length")?;
        let head_dim = match (opt("llama.attention.key_length")?, opt("llama.attention.value_length")?) {
            (Some(k), Some(v)) if k != v => {
                return Err(refuse(
                    "llama.attention.value_length",
                    &GgufValue::U64(v as u64),
                    &format!("differs from key_length {k}: not supported"),
                ))
            }
            (k, v) => k.or(v).filter(|&d| d.checked_mul(heads) != Some(hidden)),
        };
        // llama.cpp applies the factor (as freq_scale = 1/factor) whatever the type says,
        // unless it is YaRN; 0 or absent means no scaling.
        let factor = match float("llama.rope.scaling.factor")? {
            Some(f) => Some(f),
            None => float("llama.rope.scale_linear")?,
        }
        .filter(|&f| f != 0.0 && f != 1.0);
        let mut rope_scaling = match f.get("llama.rope.scaling.type") {
            Some(v) if !matches!(v.as_str(), Some("none" | "linear")) => {
                return Err(refuse("llama.rope.scaling.type", v, "only none and linear are implemented"))
            }
            _ => factor.map_or(RopeScaling::Default, |factor| RopeScaling::Linear { factor }),
        };
        if let Some(info) = f.tensor_info("rope_freqs.weight") {
            if rope_scaling != RopeScaling::Default {
                return Err(Error::Config(format!(
                    "{path}: both rope_freqs.weight and llama.rope.scaling.type: not supported together"
                )));
            }
            if info.shape.len() != 1 || info.elem_count() > 1 << 16 {
                return Err(Error::format(f.path(), "GGUF", format!("rope_freqs.weight has shape {:?}", info.shape)));
            }
            rope_scaling = RopeScaling::FreqFactors(f.tensor_f32("rope_freqs.weight")?);
        }
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: req("llama.feed_forward_length")?,
            num_hidden_layers: req("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: opt("llama.attention.head_count_kv")?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
                Error::format(f.path(), "GGUF", "missing metadata key 'llama.attention.layer_norm_rms_epsilon'")
            })?,
            rope_theta: float("llama.rope.freq_base")?.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: opt("llama.context_length")?.unwrap_or(2048),
            tie_word_embeddings: f.tensor_info("output.weight").is_none(),
            sliding_window: opt("llama.attention.sliding_window")?,
        };
        if let Some(rope_dims) = opt("llama.rope.dimension_count")? {
            if rope_dims != cfg.head_dim() {
                return Err(refuse(
                    "llama.rope.dimension_count",
                    &GgufValue::U64(rope_dims as u64),
                    &format!("partial RoPE ({rope_dims} of {} dims) is not supported", cfg.head_dim()),
                ));
            }
        }
        // validate's names are config.json's; these are the keys this file gave them under.
        let gguf_name = |key: &'static str| -> String {
            match key {
                "rms_norm_eps" => "llama.attention.layer_norm_rms_epsilon",
                "rope_theta" => "llama.rope.freq_base",
                "rope_parameters.factor" if f.get("llama.rope.scaling.factor").is_some() => "llama.rope.scaling.factor",
                "rope_parameters.factor" => "llama.rope.scale_linear",
                other => other,
            }
            .to_owned()
        };
        cfg.validate_named(&gguf_name).map_err(|e| {
            let read: Vec<String> = GGUF_KEYS
                .iter()
                .filter_map(|(k, _, _)| {
                    f.get(k).filter(|v| v.as_f64().is_some()).map(|v| format!("{k} = {}", gguf_shown(v)))
                })
                .collect();
            within(&path, e, &format!(" (from {})", read.join(", ")))
        })?;
        Ok(cfg)
    }

    /// From the text of a Hugging Face `config.json`; `origin` names the file in errors.
    /// Every key is handled as [`HF_CONFIG_KEYS`] says; any other key is refused.
    pub fn from_hf_json(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        let map = value.as_object().ok_or_else(|| Error::Config(format!("{origin}: not a JSON object")))?;
        Self::from_hf_map(map, origin)
    }

    /// [`LlamaConfig::from_hf_json`] on a parsed object.
    pub fn from_hf_map(map: &Map<String, Value>, origin: &str) -> Result<Self> {
        let r = Reader { origin, prefix: String::new(), map };
        for (key, v) in map {
            if !HF_CONFIG_KEYS.iter().any(|(k, _, _)| k == key) {
                return Err(r.refuse(key, v, "unknown key: it may change the model, so it is refused"));
            }
        }
        r.only(
            "model_type",
            |v| matches!(v.as_str(), Some("llama" | "mistral")),
            "only llama and mistral are supported",
        )?;
        r.only(
            "architectures",
            |v| {
                v.as_array().is_some_and(|a| {
                    a.iter().all(|x| matches!(x.as_str(), Some("LlamaForCausalLM" | "MistralForCausalLM")))
                })
            },
            "only LlamaForCausalLM and MistralForCausalLM are supported",
        )?;
        r.only("hidden_act", |v| matches!(v.as_str(), Some("silu" | "swish")), "only silu is implemented")?;
        let falsy = |v: &Value| v == &Value::Bool(false);
        r.only("attention_bias", falsy, "biases are not implemented")?;
        r.only("mlp_bias", falsy, "biases are not implemented")?;
        r.only("rope_interleaved", falsy, "interleaved RoPE is not implemented for config.json models")?;
        r.only("use_sliding_window", falsy, "Qwen-style sliding windows are not implemented")?;
        r.only("attention_dropout", |v| v.as_f64() == Some(0.0), "attention dropout is not implemented")?;
        r.only("partial_rotary_factor", |v| v.as_f64() == Some(1.0), "partial RoPE is not implemented")?;
        r.only("pretraining_tp", |v| v.as_u64().is_some_and(|n| n >= 1), "expected an integer ≥ 1")?;
        r.only(
            "layer_types",
            |v| v.as_array().is_some_and(|a| a.iter().all(|x| x.as_str() == Some("full_attention"))),
            "only full attention in every layer is implemented",
        )?;
        for key in ["torch_dtype", "dtype"] {
            r.only(key, |v| v.as_str().and_then(dtype_from_hf).is_some(), "expected float32, bfloat16 or float16")?;
        }
        r.only(
            "per_layer_config",
            |v| v.as_object().is_some_and(Map::is_empty),
            "per-layer overrides are not implemented",
        )?;
        if let Some(v) = r.get("quantization_config") {
            return Err(r.refuse("quantization_config", v, "quantized checkpoints are not supported"));
        }

        // Where a key is absent, MistralConfig's defaults differ from LlamaConfig's; an
        // explicit null takes the null path of both (num_key_value_heads = heads, no window).
        let mistral = r.get("model_type").and_then(Value::as_str) == Some("mistral");
        let absent = |key: &str| !map.contains_key(key);
        let max_position_embeddings =
            r.usize_opt("max_position_embeddings")?.unwrap_or(if mistral { 4096 * 32 } else { 2048 });
        let (rope_theta, rope_scaling) = rope_from_hf(&r, max_position_embeddings)?;
        let heads = r.usize_req("num_attention_heads")?;
        let hidden = r.usize_req("hidden_size")?;
        let head_dim = r.usize_opt("head_dim")?.filter(|&d| d.checked_mul(heads) != Some(hidden));
        let kv_heads = match r.usize_opt("num_key_value_heads")? {
            Some(n) => n,
            None if mistral && absent("num_key_value_heads") => 8,
            None => heads,
        };
        // transformers' Llama ignores a sliding_window (Mistral applies it); refusing longer
        // windows is the reading that is never wrong for either.
        let sliding_window = match r.usize_opt("sliding_window")? {
            None if mistral && absent("sliding_window") => Some(4096),
            w => w,
        };
        let cfg = LlamaConfig {
            vocab_size: r.usize_req("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: r.usize_req("intermediate_size")?,
            num_hidden_layers: r.usize_req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: r.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: r.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            sliding_window,
        };
        if let Some(v) = r.get("layer_types") {
            if v.as_array().map(Vec::len) != Some(cfg.num_hidden_layers) {
                return Err(r.refuse("layer_types", v, "one entry per layer expected"));
            }
        }
        // validate's names are transformers 5's; say where this file put each.
        let nested = if r.get("rope_parameters").is_some() { "rope_parameters" } else { "rope_scaling" };
        let theta_nested = r.get(nested).and_then(|v| v.get("rope_theta")).is_some_and(|v| !v.is_null());
        let hf_name = |key: &'static str| -> String {
            match key.strip_prefix("rope_parameters.") {
                Some(k) => format!("{nested}.{k}"),
                None if key == "rope_theta" && r.get(key).is_none() && theta_nested => format!("{nested}.rope_theta"),
                None => key.to_owned(),
            }
        };
        cfg.validate_named(&hf_name).map_err(|e| within(origin, e, ""))?;
        Ok(cfg)
    }

    /// A Hugging Face `config.json` object for this model, in the form both transformers
    /// 4.x and 5.x read (`rope_theta` and `rope_scaling` at the top level); `dtype` is the
    /// dtype the weights are stored in. GGUF frequency factors have no config.json form
    /// and are an error.
    pub fn to_hf_map(&self, dtype: DType) -> Result<Map<String, Value>> {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::Default => Value::Null,
            RopeScaling::Linear { factor } => serde_json::json!({ "rope_type": "linear", "factor": factor }),
            RopeScaling::Dynamic { factor } => serde_json::json!({ "rope_type": "dynamic", "factor": factor }),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                serde_json::json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
            RopeScaling::FreqFactors(_) => {
                return Err(Error::Config(
                    "RoPE frequency factors from a GGUF rope_freqs.weight have no config.json form".into(),
                ))
            }
        };
        let mistral = self.sliding_window.is_some();
        let v = serde_json::json!({
            "architectures": [if mistral { "MistralForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": if mistral { "mistral" } else { "llama" },
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "attention_dropout": 0.0,
            "torch_dtype": dtype_to_hf(dtype),
        });
        let Value::Object(mut map) = v else { unreachable!("a JSON object literal") };
        if mistral {
            map.insert("sliding_window".into(), self.sliding_window.into());
            map.remove("attention_bias");
            map.remove("mlp_bias");
        }
        Ok(map)
    }

    /// [`LlamaConfig::to_hf_map`] as pretty JSON text.
    pub fn to_hf_json(&self, dtype: DType) -> Result<String> {
        serde_json::to_string_pretty(&self.to_hf_map(dtype)?).map_err(|e| Error::Config(e.to_string()))
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
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            sliding_window: None,
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
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            sliding_window: None,
        }
    }
}

/// A validation error placed in its file, with `context` appended.
fn within(origin: &str, e: Error, context: &str) -> Error {
    match e {
        Error::Config(m) => Error::Config(format!("{origin}: {m}{context}")),
        other => other,
    }
}

/// A GGUF value shown in an error.
fn gguf_shown(v: &GgufValue) -> String {
    let s = match v {
        GgufValue::String(s) => format!("{s:?}"),
        GgufValue::Array(a) => format!("[{} values]", a.len()),
        GgufValue::F32(x) => format!("{x:?}"),
        GgufValue::F64(x) => format!("{x:?}"),
        other => other.as_f64().map_or_else(|| format!("{other:?}"), |x| x.to_string()),
    };
    s.chars().take(80).collect()
}

/// θ and the scaling from `rope_theta`, `rope_parameters` (transformers 5) and
/// `rope_scaling` (transformers 4); when both forms are given they must agree, and so must a
/// top-level `original_max_position_embeddings` with llama3's own.
fn rope_from_hf(r: &Reader<'_>, max_position_embeddings: usize) -> Result<(f64, RopeScaling)> {
    let top_theta = r.f64_opt("rope_theta")?;
    // Top level, it is llama3's original context (transformers' standardize_rope_params).
    let omp = "original_max_position_embeddings";
    let top_omp = r.usize_opt(omp)?;
    let mut found: Vec<(&str, f64, RopeScaling)> = Vec::new();
    for key in ["rope_parameters", "rope_scaling"] {
        let Some(v) = r.get(key) else { continue };
        let obj = v.as_object().ok_or_else(|| r.refuse(key, v, "expected an object"))?;
        let inner = Reader { origin: r.origin, prefix: format!("{key}."), map: obj };
        for (k, x) in obj {
            if !HF_ROPE_KEYS.contains(&k.as_str()) {
                // Nested per-layer-type parameters, yarn's beta_fast, longrope's factors, ...
                return Err(inner.refuse(k, x, "unknown RoPE parameter: not implemented"));
            }
        }
        let kind = match (inner.get("rope_type"), inner.get("type")) {
            (Some(a), Some(b)) if a != b => return Err(r.refuse(key, v, "rope_type and type disagree")),
            (Some(t), _) | (None, Some(t)) => {
                t.as_str().ok_or_else(|| inner.refuse("rope_type", t, "expected a string"))?
            }
            (None, None) => "default",
        };
        inner.only("partial_rotary_factor", |x| x.as_f64() == Some(1.0), "partial RoPE is not implemented")?;
        let factor = || -> Result<f64> {
            match inner.f64_opt("factor")? {
                Some(f) if f > 0.0 => Ok(f),
                _ => Err(r.refuse(key, v, &format!("rope_type {kind} needs a positive factor"))),
            }
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => RopeScaling::Dynamic { factor: factor()? },
            "llama3" => {
                let need =
                    |k: &str| inner.f64_opt(k)?.ok_or_else(|| r.refuse(key, v, &format!("rope_type llama3 needs {k}")));
                RopeScaling::Llama3 {
                    factor: factor()?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_max_position_embeddings: match (inner.usize_opt(omp)?, top_omp) {
                        // transformers 5 takes the top-level one, 4.x the nested one.
                        (Some(c), Some(top)) if c != top => {
                            return Err(r.refuse(omp, &Value::from(top), &format!("differs from {key}.{omp} = {c}")))
                        }
                        (Some(c), _) | (None, Some(c)) => c,
                        (None, None) => max_position_embeddings,
                    },
                }
            }
            other => {
                return Err(inner.refuse(
                    "rope_type",
                    &Value::String(other.into()),
                    "only default, linear, dynamic and llama3 RoPE are implemented",
                ))
            }
        };
        let theta = match (inner.f64_opt("rope_theta")?, top_theta) {
            (Some(a), Some(b)) if a != b => {
                return Err(r.refuse(key, v, &format!("its rope_theta differs from the top-level rope_theta {b}")))
            }
            (a, b) => a.or(b).unwrap_or(10000.0),
        };
        found.push((key, theta, scaling));
    }
    match found.as_slice() {
        [] => Ok((top_theta.unwrap_or(10000.0), RopeScaling::Default)),
        [(_, theta, s)] => Ok((*theta, s.clone())),
        [(_, t1, s1), (k2, t2, s2)] => {
            if t1 != t2 || s1 != s2 {
                let v = r.get(k2).cloned().unwrap_or(Value::Null);
                return Err(r.refuse(k2, &v, "rope_parameters and rope_scaling disagree"));
            }
            Ok((*t1, s1.clone()))
        }
        _ => unreachable!("two keys at most"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::GgufWriter;
    use serde_json::json;

    fn base_hf() -> Map<String, Value> {
        let Value::Object(m) = json!({
            "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2,
        }) else {
            unreachable!()
        };
        m
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Expect {
        /// Parses to the same config as without the key.
        Same,
        /// Parses to a different config.
        Changes,
        /// Refused with an error naming the key.
        Refused,
    }
    use Expect::*;

    /// The cases of one key: values and what each must do.
    fn hf_cases(key: &str) -> Vec<(Value, Expect)> {
        let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 16});
        match key {
            // Mistral's defaults for absent keys differ: see mistral_defaults_apply_to_absent_keys.
            "model_type" => vec![(json!("mistral"), Changes), (json!("llama"), Same), (json!("qwen2"), Refused)],
            "architectures" => {
                vec![(json!(["MistralForCausalLM"]), Same), (json!(["LlamaForSequenceClassification"]), Refused)]
            }
            "vocab_size" => vec![(json!(100), Changes), (json!(-1), Refused), (json!("x"), Refused)],
            "hidden_size" => vec![(json!(64), Changes), (json!(0), Refused)],
            "intermediate_size" => vec![(json!(128), Changes), (json!(1.5), Refused)],
            "num_hidden_layers" => vec![(json!(3), Changes), (json!(0), Refused)],
            "num_attention_heads" => vec![(json!(8), Changes), (json!(3), Refused)],
            "num_key_value_heads" => vec![(json!(4), Changes), (json!(3), Refused)],
            "head_dim" => vec![(json!(8), Same), (json!(16), Changes), (json!(7), Refused), (Value::Null, Same)],
            "rms_norm_eps" => {
                vec![(json!(1e-5), Changes), (json!(0), Refused), (json!(1e300), Refused), (json!(1e-50), Refused)]
            }
            "rope_theta" => vec![(json!(500000.0), Changes), (json!(-1), Refused), (json!(1e300), Refused)],
            "rope_parameters" => vec![
                (json!({"rope_type": "default", "rope_theta": 10000.0}), Same),
                (json!({"rope_type": "default", "rope_theta": 100000.0}), Changes),
                (llama3.clone(), Changes),
                (json!({"rope_type": "linear", "factor": 2.0}), Changes),
                (json!({"rope_type": "dynamic", "factor": 2.0}), Changes),
                (json!({"rope_type": "yarn", "factor": 2.0}), Refused),
                (json!({"rope_type": "longrope", "factor": 2.0}), Refused),
                (json!({"rope_type": "default", "beta_fast": 32}), Refused),
                (json!({"rope_type": "linear"}), Refused),
                (json!({"rope_type": "linear", "factor": 1e300}), Refused),
                (json!({"rope_type": "default", "partial_rotary_factor": 0.5}), Refused),
                (json!({"full_attention": {"rope_type": "default"}}), Refused),
            ],
            "rope_scaling" => vec![
                (Value::Null, Same),
                (json!({"type": "linear", "factor": 2.0}), Changes),
                (llama3, Changes),
                (json!({"type": "yarn", "factor": 2.0}), Refused),
                (json!({"type": "linear", "factor": 1e-50}), Refused),
                (json!("linear"), Refused),
            ],
            "max_position_embeddings" => vec![(json!(4096), Changes), (json!(-5), Refused)],
            "tie_word_embeddings" => vec![(json!(true), Changes), (json!("yes"), Refused)],
            "sliding_window" => vec![(Value::Null, Same), (json!(4096), Changes), (json!(0), Refused)],
            "hidden_act" => vec![(json!("silu"), Same), (json!("swish"), Same), (json!("gelu"), Refused)],
            "attention_bias" | "mlp_bias" | "rope_interleaved" | "use_sliding_window" => {
                vec![(json!(false), Same), (json!(true), Refused)]
            }
            "attention_dropout" => vec![(json!(0.0), Same), (json!(0.1), Refused)],
            "partial_rotary_factor" => vec![(json!(1.0), Same), (json!(0.5), Refused)],
            "layer_types" => vec![
                (json!(["full_attention", "full_attention"]), Same),
                (json!(["sliding_attention", "full_attention"]), Refused),
                (json!(["full_attention"]), Refused),
            ],
            "pretraining_tp" => vec![(json!(1), Same), (json!(2), Same), (json!(0), Refused)],
            // Not used by default RoPE; with llama3, see rope_forms_agree_or_are_refused.
            "original_max_position_embeddings" => vec![(json!(16), Same), (json!(0), Refused)],
            "per_layer_config" => {
                vec![(Value::Null, Same), (json!({}), Same), (json!({"0": {"intermediate_size": 128}}), Refused)]
            }
            "torch_dtype" | "dtype" => {
                vec![(json!("bfloat16"), Same), (json!("float16"), Same), (json!("int8"), Refused)]
            }
            "quantization_config" => vec![(json!({"quant_method": "gptq", "bits": 4}), Refused)],
            _ => vec![],
        }
    }

    fn parse(map: &Map<String, Value>) -> Result<LlamaConfig> {
        LlamaConfig::from_hf_map(map, "test/config.json")
    }

    /// Every key of [`HF_CONFIG_KEYS`]: a harmless key changes nothing whatever its value;
    /// a read key changes the config, or is refused by name, as its cases say; an unknown
    /// key is refused by name.
    #[test]
    fn every_hf_config_key_is_read_harmless_or_refused() {
        let plain = parse(&base_hf()).unwrap();
        for (key, use_, _) in HF_CONFIG_KEYS {
            let cases = match use_ {
                KeyUse::Harmless => vec![(json!("any value"), Same), (json!({"nested": [1, 2]}), Same)],
                KeyUse::Read => hf_cases(key),
            };
            assert!(!cases.is_empty(), "key '{key}' has no test case");
            if *use_ == KeyUse::Read {
                assert!(cases.iter().any(|(_, e)| *e != Same), "read key '{key}' has no case that changes or refuses");
            }
            for (value, expect) in cases {
                let mut map = base_hf();
                map.insert(key.to_string(), value.clone());
                let got = parse(&map);
                let what = format!("{key} = {value}");
                match (expect, got) {
                    (Same, Ok(c)) => assert_eq!(c, plain, "{what} changed the config"),
                    (Changes, Ok(c)) => assert_ne!(c, plain, "{what} changed nothing"),
                    (Refused, Err(e)) => {
                        let e = e.to_string();
                        assert!(
                            e.contains(key) && e.contains("test/config.json"),
                            "{what}: error does not name it: {e}"
                        );
                    }
                    (want, got) => panic!("{what}: expected {want:?}, got {got:?}"),
                }
            }
        }
        let mut map = base_hf();
        map.insert("rope_scaling_v2".into(), json!({"factor": 2}));
        let e = parse(&map).unwrap_err().to_string();
        assert!(e.contains("'rope_scaling_v2'") && e.contains("unknown key"), "{e}");
        for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"] {
            let mut map = base_hf();
            map.remove(key);
            let e = parse(&map).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("missing"), "{e}");
        }
    }

    #[test]
    fn rope_forms_agree_or_are_refused() {
        let with = |pairs: &[(&str, Value)]| {
            let mut map = base_hf();
            for (k, v) in pairs {
                map.insert(k.to_string(), v.clone());
            }
            parse(&map)
        };
        // transformers 5 (`rope_parameters`) and 4 (top-level θ + `rope_scaling`) give one config.
        let v5 =
            with(&[("rope_parameters", json!({"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}))]).unwrap();
        let v4 = with(&[("rope_theta", json!(5e5)), ("rope_scaling", json!({"rope_type": "linear", "factor": 2.0}))])
            .unwrap();
        assert_eq!(v5, v4);
        assert_eq!((v5.rope_theta, v5.rope_scaling.clone()), (5e5, RopeScaling::Linear { factor: 2.0 }));
        // Both forms present and different, or two thetas that differ: refused.
        let e = with(&[
            ("rope_parameters", json!({"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0})),
            ("rope_scaling", json!({"type": "linear", "factor": 4.0})),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("disagree"), "{e}");
        let e = with(&[
            ("rope_theta", json!(1e4)),
            ("rope_parameters", json!({"rope_type": "default", "rope_theta": 5e5})),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("rope_theta"), "{e}");
        // llama3 without original_max_position_embeddings takes max_position_embeddings, as
        // transformers does.
        let c = with(&[
            ("max_position_embeddings", json!(8192)),
            (
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
            ),
        ])
        .unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { original_max_position_embeddings: 8192, .. }));
        // A top-level original_max_position_embeddings is llama3's original context
        // (transformers 5 moves it into rope_parameters); it must agree with a nested one.
        let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0});
        let c = with(&[("original_max_position_embeddings", json!(16)), ("rope_parameters", llama3.clone())]).unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { original_max_position_embeddings: 16, .. }));
        let mut nested = llama3.clone();
        nested["original_max_position_embeddings"] = json!(16);
        let c2 = with(&[("original_max_position_embeddings", json!(16)), ("rope_parameters", nested.clone())]).unwrap();
        assert_eq!(c2, c);
        let e = with(&[("original_max_position_embeddings", json!(32)), ("rope_parameters", nested)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'original_max_position_embeddings' = 32") && e.contains("= 16"), "{e}");
    }

    /// Every harmless key at once, each with a value of another JSON type, changes nothing;
    /// a key not in the table is still refused by name, with its value.
    #[test]
    fn harmless_keys_take_any_value_and_unknown_keys_are_refused() {
        let plain = parse(&base_hf()).unwrap();
        let values = [
            Value::Null,
            json!(0),
            json!(-1.5e300),
            json!(true),
            json!("LLaMA v2"),
            json!([1, "two", null]),
            json!({"a": {"b": [3]}}),
        ];
        let mut map = base_hf();
        let harmless = HF_CONFIG_KEYS.iter().filter(|(_, u, _)| *u == KeyUse::Harmless);
        for (i, (key, _, _)) in harmless.enumerate() {
            map.insert(key.to_string(), values[i % values.len()].clone());
        }
        assert_eq!(parse(&map).unwrap(), plain);
        for (key, value) in [("_model_name_or_path_v2", json!("x")), ("unk_token_ids", json!([0])), ("rope", json!(1))]
        {
            let mut with_unknown = map.clone();
            with_unknown.insert(key.to_string(), value.clone());
            let e = parse(&with_unknown).unwrap_err().to_string();
            assert!(
                e.contains(&format!("'{key}' = {value}"))
                    && e.contains("unknown key")
                    && e.contains("test/config.json"),
                "{e}"
            );
        }
    }

    /// A head_dim no model has is refused by name before the RoPE frequencies are computed
    /// (2³¹ of them took 4 GiB: a fuzz case of issue 22).
    #[test]
    fn an_absurd_head_dim_is_refused_before_rope_is_computed() {
        let mut map = base_hf();
        map.insert("head_dim".into(), json!(1u64 << 31));
        let e = parse(&map).unwrap_err().to_string();
        assert!(e.contains("head_dim 2147483648 exceeds 65536"), "{e}");
        map.insert("head_dim".into(), json!(MAX_HEAD_DIM));
        assert!(parse(&map).is_ok());
    }

    /// A `mistral` config.json takes MistralConfig's defaults where a key is absent (8 key/value
    /// heads, a 4096-token window, 131072 positions, transformers 4.x and 5.x alike); null keeps
    /// the null reading; `llama` keeps LlamaConfig's.
    #[test]
    fn mistral_defaults_apply_to_absent_keys() {
        let mut map = base_hf();
        map.insert("num_attention_heads".into(), json!(8));
        map.remove("num_key_value_heads");
        let llama = parse(&map).unwrap();
        assert_eq!((llama.num_key_value_heads, llama.sliding_window, llama.max_position_embeddings), (8, None, 2048));
        map.insert("num_attention_heads".into(), json!(16));
        map.insert("hidden_size".into(), json!(64));
        let llama = parse(&map).unwrap();
        assert_eq!(llama.num_key_value_heads, 16);
        map.insert("model_type".into(), json!("mistral"));
        let m = parse(&map).unwrap();
        assert_eq!((m.num_key_value_heads, m.sliding_window, m.max_position_embeddings), (8, Some(4096), 131072));
        let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0});
        map.insert("rope_parameters".into(), llama3);
        let m = parse(&map).unwrap();
        assert!(matches!(m.rope_scaling, RopeScaling::Llama3 { original_max_position_embeddings: 131072, .. }));
        map.remove("rope_parameters");
        map.insert("num_key_value_heads".into(), Value::Null);
        map.insert("sliding_window".into(), Value::Null);
        let m = parse(&map).unwrap();
        assert_eq!((m.num_key_value_heads, m.sliding_window), (16, None));
    }

    /// llama3 scaling worked by hand for head_dim 8, θ 10⁴, f 8, l 1, h 4, c 16:
    /// inv_freq = [1, 0.1, 0.01, 0.001], wavelen = 2π/inv = [6.28, 62.8, 628, 6283];
    /// c/l = 16, c/h = 4. Dims 1–3 have wavelen > 16: inv/8. Dim 0 (4 ≤ 6.28 ≤ 16) is
    /// smoothed: s = (16/2π − 1)/3, (1 − s)/8 + s.
    #[test]
    fn llama3_and_linear_frequencies_by_hand() {
        let mut c = LlamaConfig { hidden_size: 32, num_attention_heads: 4, ..LlamaConfig::tiny() };
        c.rope_scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16,
        };
        let s = (16.0 / (2.0 * std::f64::consts::PI) - 1.0) / 3.0;
        let want = [(1.0 - s) / 8.0 + s, 0.1 / 8.0, 0.01 / 8.0, 0.001 / 8.0];
        let got = c.rope_inv_freq();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() <= 1e-6 * w, "llama3 inv_freq {got:?} vs {want:?}");
        }
        c.rope_scaling = RopeScaling::Linear { factor: 4.0 };
        let got = c.rope_inv_freq();
        for (g, w) in got.iter().zip([0.25, 0.025, 0.0025, 0.00025]) {
            assert!((*g as f64 - w).abs() <= 1e-6 * w, "linear inv_freq {got:?}");
        }
        c.rope_scaling = RopeScaling::FreqFactors(vec![1.0, 2.0, 4.0, 8.0]);
        let got = c.rope_inv_freq();
        for (g, w) in got.iter().zip([1.0, 0.05, 0.0025, 0.000125]) {
            assert!((*g as f64 - w).abs() <= 1e-6 * w, "freq-factor inv_freq {got:?}");
        }
    }

    #[test]
    fn windows_beyond_the_sliding_window_or_dynamic_range_are_refused() {
        let mut c = LlamaConfig::tiny();
        assert!(c.check_window(1 << 20).is_ok());
        c.sliding_window = Some(48);
        assert!(c.check_window(48).is_ok());
        let e = c.check_window(49).unwrap_err().to_string();
        assert!(e.contains("sliding_window = 48") && e.contains("49"), "{e}");
        c.sliding_window = None;
        c.rope_scaling = RopeScaling::Dynamic { factor: 2.0 };
        assert!(c.check_window(c.max_position_embeddings).is_ok());
        let e = c.check_window(c.max_position_embeddings + 1).unwrap_err().to_string();
        assert!(e.contains("dynamic"), "{e}");
    }

    fn gguf_base() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_str("general.architecture", "llama")
            .add_u32("llama.vocab_size", 320)
            .add_u32("llama.embedding_length", 32)
            .add_u32("llama.feed_forward_length", 64)
            .add_u32("llama.block_count", 2)
            .add_u32("llama.attention.head_count", 4)
            .add_u32("llama.attention.head_count_kv", 2)
            .add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
        w
    }

    fn gguf_config(w: &GgufWriter, name: &str) -> Result<LlamaConfig> {
        let path = crate::io::test_dir("config").join(name);
        w.write(&path).unwrap();
        LlamaConfig::from_gguf(&GgufFile::open(&path).unwrap())
    }

    fn gguf_cases(key: &str) -> Vec<(GgufValue, Expect)> {
        use GgufValue::{String as S, F32, F64, U32};
        match key {
            "general.architecture" => vec![(S("llama".into()), Same), (S("qwen2".into()), Refused)],
            "llama.vocab_size" | "llama.embedding_length" | "llama.feed_forward_length" | "llama.block_count" => {
                vec![(U32(96), Changes), (S("x".into()), Refused)]
            }
            "llama.attention.head_count" => vec![(U32(8), Changes), (U32(3), Refused)],
            "llama.attention.head_count_kv" => vec![(U32(4), Changes), (U32(3), Refused)],
            "llama.attention.key_length" | "llama.attention.value_length" => {
                vec![(U32(8), Same), (U32(16), Changes), (U32(7), Refused)]
            }
            "llama.attention.layer_norm_rms_epsilon" => {
                vec![(F32(1e-6), Changes), (F32(-1.0), Refused), (F64(1e300), Refused), (F64(1e-50), Refused)]
            }
            "llama.attention.sliding_window" => vec![(U32(4096), Changes), (U32(0), Refused)],
            "llama.rope.freq_base" => vec![(F32(500000.0), Changes), (F32(0.0), Refused), (F64(1e300), Refused)],
            "llama.rope.dimension_count" => vec![(U32(8), Same), (U32(4), Refused)],
            "llama.rope.scaling.type" => {
                vec![(S("none".into()), Same), (S("linear".into()), Same), (S("yarn".into()), Refused)]
            }
            "llama.rope.scaling.factor" | "llama.rope.scale_linear" => {
                vec![
                    (F32(4.0), Changes),
                    (F32(1.0), Same),
                    (F32(0.0), Same),
                    (F64(1e300), Refused),
                    (S("x".into()), Refused),
                ]
            }
            "llama.context_length" => vec![(U32(8192), Changes)],
            "llama.expert_count" | "llama.expert_used_count" => vec![(U32(0), Same), (U32(8), Refused)],
            _ => vec![],
        }
    }

    /// Every key of [`GGUF_KEYS`], as the HF test: read keys change or refuse, harmless
    /// ones change nothing, unknown keys in any namespace but `general.`, `tokenizer.` and
    /// `quantize.` are refused by name.
    #[test]
    fn every_gguf_key_is_read_harmless_or_refused() {
        let plain = gguf_config(&gguf_base(), "plain.gguf").unwrap();
        for (i, (key, use_, _)) in GGUF_KEYS.iter().enumerate() {
            let cases = match use_ {
                KeyUse::Harmless => vec![(GgufValue::U32(7), Same), (GgufValue::String("x".into()), Same)],
                KeyUse::Read => gguf_cases(key),
            };
            assert!(!cases.is_empty(), "GGUF key '{key}' has no test case");
            for (j, (value, expect)) in cases.into_iter().enumerate() {
                let mut w = gguf_base();
                w.add_metadata(key, value.clone());
                let what = format!("{key} = {value:?}");
                match (expect, gguf_config(&w, &format!("case-{i}-{j}.gguf"))) {
                    (Same, Ok(c)) => assert_eq!(c, plain, "{what} changed the config"),
                    (Changes, Ok(c)) => assert_ne!(c, plain, "{what} changed nothing"),
                    (Refused, Err(e)) => {
                        let e = e.to_string();
                        let named = e.contains(key) || (*key == "general.architecture" && e.contains("qwen2"));
                        assert!(named, "{what}: error does not name it: {e}");
                    }
                    (want, got) => panic!("{what}: expected {want:?}, got {got:?}"),
                }
            }
        }
        for (key, expect) in [
            ("llama.attention.clamp_kqv", Refused),
            ("split.count", Refused),
            ("general.url", Same),
            ("quantize.imatrix.file", Same),
        ] {
            let mut w = gguf_base();
            w.add_u32(key, 2);
            match (expect, gguf_config(&w, "extra.gguf")) {
                (Same, Ok(c)) => assert_eq!(c, plain, "{key}"),
                (Refused, Err(e)) => assert!(e.to_string().contains(key), "{e}"),
                (want, got) => panic!("{key}: expected {want:?}, got {got:?}"),
            }
        }
    }

    /// Floats the forward uses in f32 that are infinite (1e300) or 0 (1e-50) there, or that
    /// overflow the RoPE frequencies, are refused with the file's key and the value, from
    /// config.json and from GGUF alike.
    #[test]
    fn floats_that_are_no_positive_finite_f32_are_refused_by_name() {
        let e = LlamaConfig { rms_norm_eps: 1e300, ..LlamaConfig::tiny() }.validate().unwrap_err().to_string();
        assert!(e.contains("rms_norm_eps = 1e300") && e.contains("where it is inf"), "{e}");
        let with = |pairs: &[(&str, Value)]| {
            let mut map = base_hf();
            for (k, v) in pairs {
                map.insert(k.to_string(), v.clone());
            }
            parse(&map).unwrap_err().to_string()
        };
        let llama3 = |factor: f64, low: f64, high: f64| {
            json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                   "original_max_position_embeddings": 16})
        };
        for (pairs, named) in [
            (vec![("rms_norm_eps", json!(1e300))], "rms_norm_eps = 1e300: must be a positive finite f32"),
            (vec![("rms_norm_eps", json!(1e-50))], "rms_norm_eps = 1e-50: must be a positive finite f32"),
            (vec![("rope_theta", json!(1e300))], "rope_theta = 1e300"),
            (
                vec![("rope_parameters", json!({"rope_type": "default", "rope_theta": 1e39}))],
                "rope_parameters.rope_theta = 1e39",
            ),
            (vec![("rope_parameters", llama3(1e300, 1.0, 4.0))], "rope_parameters.factor = 1e300"),
            (vec![("rope_scaling", llama3(8.0, 1e-50, 4.0))], "rope_scaling.low_freq_factor = 1e-50"),
            (vec![("rope_scaling", llama3(8.0, 1.0, 1e39))], "rope_scaling.high_freq_factor = 1e39"),
            // Distinct in f64, equal in f32: the smoothing would divide by 0.
            (
                vec![("rope_parameters", llama3(8.0, 1.0, 1.00000001))],
                "rope_parameters.high_freq_factor = 1.00000001 must exceed rope_parameters.low_freq_factor = 1.0",
            ),
            // Each a positive finite f32, but inv_freq / factor overflows.
            (
                vec![("rope_scaling", json!({"type": "linear", "factor": 1e-40}))],
                "overflows f32 with rope_theta = 10000.0, rope_scaling.factor = 1e-40",
            ),
        ] {
            let e = with(&pairs);
            assert!(e.contains("test/config.json: ") && e.contains(named), "{pairs:?}: {e}");
        }
        for (key, value, named) in [
            (
                "llama.attention.layer_norm_rms_epsilon",
                1e300,
                "llama.attention.layer_norm_rms_epsilon = 1e300: must be",
            ),
            (
                "llama.attention.layer_norm_rms_epsilon",
                1e-50,
                "llama.attention.layer_norm_rms_epsilon = 1e-50: must be",
            ),
            ("llama.rope.freq_base", 1e300, "llama.rope.freq_base = 1e300: must be"),
            ("llama.rope.scale_linear", 1e300, "llama.rope.scale_linear = 1e300: must be"),
        ] {
            let mut w = gguf_base();
            w.add_metadata(key, GgufValue::F64(value));
            let e = gguf_config(&w, "f32-overflow.gguf").unwrap_err().to_string();
            assert!(e.contains("f32-overflow.gguf: ") && e.contains(named), "{key} = {value:e}: {e}");
        }
    }

    #[test]
    fn exported_config_reads_back_the_same() {
        for c in [
            LlamaConfig::tiny(),
            LlamaConfig { head_dim: Some(12), sliding_window: Some(32), ..LlamaConfig::tiny() },
            LlamaConfig { rope_scaling: RopeScaling::Linear { factor: 2.0 }, ..LlamaConfig::tiny() },
            LlamaConfig { rope_scaling: RopeScaling::Dynamic { factor: 2.0 }, ..LlamaConfig::tiny() },
            LlamaConfig {
                rope_scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 16,
                },
                ..LlamaConfig::tiny()
            },
        ] {
            let back = LlamaConfig::from_hf_json(&c.to_hf_json(DType::BF16).unwrap(), "exported").unwrap();
            assert_eq!(back, c);
        }
        let c = LlamaConfig { rope_scaling: RopeScaling::FreqFactors(vec![1.0; 3]), ..LlamaConfig::tiny() };
        assert!(c.to_hf_json(DType::F32).unwrap_err().to_string().contains("rope_freqs"));
    }
}
