//! Memory plan of a fine-tuning run: the bytes each part of training holds at the peak,
//! predicted from the model shape and the run's settings, item by item, from what our
//! code allocates (the compressed base layout of [`crate::sparse::SparseWeight`], the
//! tensors each op saves for backward, the one masked-LoRA workspace, the optimizer's f32
//! state). The trainer measures its real peak from the allocator for comparison. Both
//! methods built so far (masked-lora, lors) hold the same tensors; they differ in FLOPs.
//!
//! Saved activations per decoder layer, n = batch·seq tokens, b bytes per element: the
//! layer input and the two RMSNorm outputs (n·dim each, read by the norms and the
//! projections), the normed input after attention (n·dim), q and k after RoPE, v and the
//! attention output (n·(2·Hq + 2·Hkv)·hd), the attention log-sum-exp (n·Hq f32), gate, up
//! and their SwiGLU product (3·n·hidden). With checkpointing only the layer inputs stay,
//! and one layer's set is rebuilt during its backward. The head keeps its input, the
//! logits (n·vocab) and, during backward, their gradient. The peak is the resident state
//! plus the largest of three phases (head backward, a decoder layer's backward, the
//! optimizer update), see [`plan`].

use crate::model::llama::{LlamaConfig, Proj};
use crate::{DType, Error, Result};

/// What a run looks like.
#[derive(Clone, Debug)]
pub struct PlanInput {
    /// Model shape.
    pub config: LlamaConfig,
    /// Fraction of each decoder weight pruned (unstructured), or N:M.
    pub sparsity: f64,
    /// N:M pattern instead of unstructured (values n/m of the weights, indices ⌈log2 m⌉ bits).
    pub nm: Option<(usize, usize)>,
    /// Compute dtype (F32 or BF16).
    pub dtype: DType,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows per micro-batch.
    pub batch: usize,
    /// Adapter rank.
    pub rank: usize,
    /// Activation checkpointing per decoder layer.
    pub checkpointing: bool,
    /// On a GPU (workspace in the compute dtype) or the CPU (workspace in f32).
    pub cuda: bool,
}

/// One line of the plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlanItem {
    /// What it is.
    pub name: &'static str,
    /// Bytes.
    pub bytes: u64,
}

/// The predicted peak, by item.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryPlan {
    /// Items, largest parts first as they are listed in the module docs.
    pub items: Vec<PlanItem>,
    /// Their sum.
    pub total_bytes: u64,
    /// When the peak happens (what the transient item holds).
    pub peak_phase: &'static str,
}

impl MemoryPlan {
    /// Bytes of the named item (0 if absent).
    pub fn get(&self, name: &str) -> u64 {
        self.items.iter().find(|i| i.name == name).map_or(0, |i| i.bytes)
    }
}

/// Known model shapes for `sparsetune plan --shape`.
pub fn shape(name: &str) -> Result<LlamaConfig> {
    let base = LlamaConfig::tiny();
    let c = |vocab, dim, hidden, layers, heads, kv, tied| LlamaConfig {
        vocab_size: vocab,
        hidden_size: dim,
        intermediate_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        max_position_embeddings: 4096,
        tie_word_embeddings: tied,
        ..base.clone()
    };
    match name {
        "llama2-7b" => Ok(c(32000, 4096, 11008, 32, 32, 32, false)),
        "llama2-13b" => Ok(c(32000, 5120, 13824, 40, 40, 40, false)),
        "llama3-8b" => Ok(c(128256, 4096, 14336, 32, 32, 8, false)),
        "smollm2-135m" => Ok(c(49152, 576, 1536, 30, 9, 3, true)),
        other => Err(Error::invalid(format!(
            "unknown shape '{other}' (llama2-7b, llama2-13b, llama3-8b, smollm2-135m; or --model)"
        ))),
    }
}

/// The plan for `input`.
pub fn plan(input: &PlanInput) -> Result<MemoryPlan> {
    let c = &input.config;
    c.validate()?;
    if !(0.0..1.0).contains(&input.sparsity) || input.rank == 0 || input.seq_len == 0 || input.batch == 0 {
        return Err(Error::invalid("plan: sparsity in [0, 1), rank, seq-len and batch ≥ 1"));
    }
    if !input.dtype.is_compute_float() {
        return Err(Error::invalid(format!("plan: compute dtype must be f32 or bf16, not {}", input.dtype)));
    }
    let b = input.dtype.size_in_bytes() as u64;
    let (l, dim, hidden, vocab) =
        (c.num_hidden_layers as u64, c.hidden_size as u64, c.intermediate_size as u64, c.vocab_size as u64);
    let (hq, hkv, hd) = (c.num_attention_heads as u64, c.num_key_value_heads as u64, c.head_dim() as u64);
    let n = (input.batch * input.seq_len) as u64;
    let r = input.rank as u64;

    let (mut base, mut adapter_params, mut largest) = (0u64, 0u64, 0u64);
    for p in Proj::ALL {
        let [rows, cols] = p.shape(c).map(|d| d as u64);
        base += match input.nm {
            Some((nk, m)) => {
                let kept = rows * (cols / m as u64) * nk as u64;
                let bits = usize::BITS - (m - 1).leading_zeros();
                kept * b + rows * (kept / rows * u64::from(bits)).div_ceil(8)
            }
            None => {
                let kept = ((rows * cols) as f64 * (1.0 - input.sparsity)).round() as u64;
                kept * b + rows * cols.div_ceil(8) + (rows + 1) * 4
            }
        };
        adapter_params += r * (rows + cols);
        largest = largest.max(rows * cols);
    }
    base *= l;
    adapter_params *= l;
    let embed = vocab * dim * b * if c.tie_word_embeddings { 1 } else { 2 } + (2 * l + 1) * dim * b;
    let master = if input.dtype == DType::F32 { 0 } else { 4 * adapter_params };
    let optimizer = 8 * adapter_params + master;
    // Gradients: each backward hands back the dtype gradient, summed into f32 accumulators.
    let grads = adapter_params * (4 + if input.dtype == DType::F32 { 0 } else { b });

    let per_layer = n * (4 * dim + (2 * hq + 2 * hkv) * hd + 3 * hidden) * b + n * hq * 4;
    let kept_through_forward = if input.checkpointing { l * n * dim * b } else { l * per_layer };
    // The activation side peaks in one of three phases; the plan takes the largest.
    // head: the logits and their gradient next to everything saved;
    let head = 2 * n * dim * b + 2 * n * vocab * b + n * 4;
    // layer: inside a decoder layer's backward, its rebuilt set (checkpointing), the
    // activation gradients (dy, then d(gate), d(up) while the product's gradient is alive:
    // n·(dim + 2·hidden)) and the adapter gradients produced so far (at most all of them);
    let layer = if input.checkpointing { per_layer } else { 0 } + n * (dim + 2 * hidden) * b + adapter_params * b;
    // update: activations are gone; the f32 accumulators and the last dtype gradients.
    let phases = [
        ("logits and their gradient (head backward)", kept_through_forward, head),
        ("one decoder layer's backward", kept_through_forward, layer),
        ("optimizer update", 0, grads),
    ];
    let (phase, saved, transient) = phases.into_iter().max_by_key(|(_, s, t)| s + t).expect("three phases");
    let ws_elem = if input.cuda { b } else { 4 };
    let workspace = largest * ws_elem;

    let items = vec![
        PlanItem { name: "compressed base", bytes: base },
        PlanItem { name: "embeddings, head, norms", bytes: embed },
        PlanItem { name: "adapters", bytes: adapter_params * b },
        PlanItem { name: "optimizer state", bytes: optimizer },
        PlanItem { name: "workspace", bytes: workspace },
        PlanItem { name: "saved activations", bytes: saved },
        PlanItem { name: "peak transient", bytes: transient },
    ];
    let total_bytes = items.iter().map(|i| i.bytes).sum();
    Ok(MemoryPlan { items, total_bytes, peak_phase: phase })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama7b(checkpointing: bool) -> PlanInput {
        PlanInput {
            config: shape("llama2-7b").unwrap(),
            sparsity: 0.5,
            nm: None,
            dtype: DType::BF16,
            seq_len: 2048,
            batch: 1,
            rank: 16,
            checkpointing,
            cuda: true,
        }
    }

    #[test]
    fn llama2_7b_meets_the_memory_targets() {
        const GIB: f64 = (1u64 << 30) as f64;
        let with = plan(&llama7b(true)).unwrap();
        let without = plan(&llama7b(false)).unwrap();
        // The base by hand: 6.48e9 decoder weights · (1 byte of bf16 values at 50% + 1/8 of mask).
        let weights = 32.0 * (4.0 * 4096.0 * 4096.0 + 3.0 * 4096.0 * 11008.0);
        let base = with.get("compressed base") as f64;
        assert!((base / (weights * 1.125) - 1.0).abs() < 1e-3, "base {base} vs {}", weights * 1.125);
        assert!(with.total_bytes as f64 / GIB <= 11.0, "with checkpointing: {:.2} GiB", with.total_bytes as f64 / GIB);
        assert!(without.total_bytes as f64 / GIB <= 20.0, "without: {:.2} GiB", without.total_bytes as f64 / GIB);
        assert!(without.total_bytes > with.total_bytes);
    }
}
