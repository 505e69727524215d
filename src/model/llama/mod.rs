//! LLaMA: config, tensor names, weights, forward to logits and loss (generation: `crate::infer`),
//! loading (GGUF, safetensors files, sharded Hugging Face checkpoints) and saving
//! (safetensors).

mod config;
pub mod hf_dir;
pub mod load;
mod model;
mod names;
pub mod source;

pub use config::{
    dtype_from_hf, dtype_to_hf, KeyUse, LlamaConfig, RopeScaling, GGUF_KEYS, HF_CONFIG_KEYS, HF_ROPE_KEYS,
};
pub use hf_dir::{save_model, ModelWriter, OutputForm, OutputSpec, DEFAULT_MAX_SHARD_BYTES};
pub use load::{load, load_config, load_tokenizer, save_safetensors, save_safetensors_as, WeightLayout};
pub use model::{DecoderLayer, ForwardOptions, LinearInput, Llama};
pub use names::{Part, Proj};
pub use source::{unpermute_rows, ModelFormat, ModelSource};
