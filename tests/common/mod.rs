//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use sparsetune::model::llama::{Llama, LlamaConfig};
use sparsetune::{DType, Device, Tensor};

/// The binary under test: `$SPARSETUNE_BIN` when set (test executables carried to another
/// machine), else the one cargo built.
pub fn binary() -> PathBuf {
    std::env::var_os("SPARSETUNE_BIN").map(Into::into).unwrap_or_else(|| env!("CARGO_BIN_EXE_sparsetune").into())
}

/// Runs the binary: (exit code, stdout, stderr).
pub fn sparsetune(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(binary()).args(args).output().expect("run sparsetune");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh scratch directory for this test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sparsetune-it-{}", std::process::id())).join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Removes a scratch directory once its test has checked what it wrote (the real-model
/// tests leave gigabytes otherwise); a failing test keeps it for inspection.
pub fn remove_scratch(dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The tiny random LLaMA used across tests (GQA 4/2, tied embeddings, 2 layers).
pub fn tiny_model(dtype: DType, device: &Device, seed: u64) -> Llama {
    Llama::random(&LlamaConfig::tiny(), dtype, device, seed).expect("tiny model")
}

/// A model's tensors as (Hugging Face name, shape, little-endian bytes), for
/// [`write_f32_safetensors`].
pub fn hf_blobs(m: &Llama) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    m.named_tensors()
        .expect("named tensors")
        .into_iter()
        .map(|(p, t)| (p.hf_name(), t.dims().to_vec(), t.to_le_bytes().expect("tensor bytes")))
        .collect()
}

/// Writes F32 tensors given as (name, shape, little-endian bytes) to a safetensors file.
pub fn write_f32_safetensors(
    path: &std::path::Path,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    metadata: &std::collections::BTreeMap<String, String>,
) {
    let entries: Vec<_> = tensors
        .iter()
        .map(|(n, s, d)| sparsetune::io::SafetensorsEntry {
            name: n.clone(),
            dtype: DType::F32,
            shape: s.clone(),
            data: d,
        })
        .collect();
    sparsetune::io::write_safetensors(path, &entries, metadata).expect("write safetensors");
}

/// Adds the `llama.*` metadata of `c` (architecture, sizes, norm epsilon, RoPE base) to a
/// GGUF being written, as llama.cpp names them.
pub fn add_gguf_llama_metadata(w: &mut sparsetune::io::GgufWriter, c: &LlamaConfig) {
    w.add_str("general.architecture", "llama")
        .add_u32("llama.embedding_length", c.hidden_size as u32)
        .add_u32("llama.feed_forward_length", c.intermediate_size as u32)
        .add_u32("llama.block_count", c.num_hidden_layers as u32)
        .add_u32("llama.attention.head_count", c.num_attention_heads as u32)
        .add_u32("llama.attention.head_count_kv", c.num_key_value_heads as u32)
        .add_u32("llama.vocab_size", c.vocab_size as u32)
        .add_u32("llama.context_length", c.max_position_embeddings as u32)
        .add_f32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps as f32)
        .add_f32("llama.rope.freq_base", c.rope_theta as f32);
}

/// Token ids and next-token targets [batch, t] from a deterministic pattern.
pub fn tokens(batch: usize, t: usize, vocab: usize, device: &Device) -> (Tensor, Tensor) {
    let all: Vec<u32> = (0..batch * (t + 1)).map(|i| ((i * 37 + 11) % vocab) as u32).collect();
    let mut ids = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch {
        let row = &all[b * (t + 1)..(b + 1) * (t + 1)];
        ids.extend_from_slice(&row[..t]);
        targets.extend_from_slice(&row[1..]);
    }
    (
        Tensor::from_vec(ids, [batch, t], device).expect("ids"),
        Tensor::from_vec(targets, [batch, t], device).expect("targets"),
    )
}
