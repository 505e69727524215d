//! Loading and saving LLaMA weights.
//! - Loading: [`super::ModelSource`] (GGUF, one safetensors file, a sharded checkpoint,
//!   or a directory); [`load`], [`load_tokenizer`] and [`load_config`] open one and take
//!   what they need.
//! - Saving one file writes HF names (f32 or bf16), `format: pt`, the config and the
//!   tokenizer in the metadata, so one file is a complete model; the decoder linears either
//!   dense (zeros where pruned) or in the compressed-tensors `sparse-bitmask` naming
//!   ([`WeightLayout`]), which loading expands back (bit-exact).

use std::collections::BTreeMap;
use std::path::Path;

pub use super::source::unpermute_rows;
use super::source::{META_CONFIG, META_LAYOUT, META_TOKENIZER, META_TOKENIZER_CONFIG, META_WRITE};
use super::{Llama, LlamaConfig, ModelSource, Part};
use crate::io::{write_owned, OwnedEntry, Tokenizer};
use crate::{DType, Device, Error, Result};

/// Loads a model onto `device` in `dtype` (F32 or BF16).
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Llama> {
    if !dtype.is_compute_float() {
        return Err(Error::invalid(format!("model dtype must be f32 or bf16, not {dtype}")));
    }
    ModelSource::open(path)?.load(device, dtype)
}

/// The tokenizer stored with a model (see [`ModelSource::tokenizer`]).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    ModelSource::open(path)?.tokenizer()
}

/// The config of a model without loading its weights.
pub fn load_config(path: &Path) -> Result<LlamaConfig> {
    Ok(ModelSource::open(path)?.config().clone())
}

/// How `save_safetensors_as` stores the decoder linears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// Dense HF tensors (zeros where pruned): loads in transformers unchanged.
    Dense,
    /// compressed-tensors `sparse-bitmask` naming: `P.compressed` (kept values, 1-D),
    /// `P.bitmask` (U8 [rows, ceil(cols/8)]), `P.shape` (U32 \[2\]), `P.row_offsets` (U32
    /// \[rows\]) for every decoder linear P; other tensors dense.
    SparseBitmask,
}

/// Writes `model` as HF-named safetensors in `dtype` (F32 or BF16), with the config, the
/// tokenizer (if given), a write id (`sparsetune.write`, unless `extra` gives one) and
/// `extra` (e.g. [`crate::io::outputs::META_WRITTEN_BY`]) in the metadata. The write is
/// atomic.
pub fn save_safetensors(
    model: &Llama,
    path: &Path,
    dtype: DType,
    tokenizer: Option<&Tokenizer>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    save_safetensors_as(model, path, dtype, WeightLayout::Dense, tokenizer, extra)
}

/// [`save_safetensors`] with a choice of layout for the decoder linears (the model must be
/// dense: merge adapters first). Both layouts load with [`load`].
pub fn save_safetensors_as(
    model: &Llama,
    path: &Path,
    dtype: DType,
    layout: WeightLayout,
    tokenizer: Option<&Tokenizer>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    if !dtype.is_compute_float() {
        return Err(Error::invalid(format!("export dtype must be f32 or bf16, not {dtype}")));
    }
    let mut blobs = Vec::new();
    for (part, t) in model.named_tensors()? {
        let name = part.hf_name();
        if layout == WeightLayout::SparseBitmask && matches!(part, Part::Linear(..)) {
            let w = crate::sparse::SparseWeight::from_dense(t, crate::sparse::SparseFormat::Bitmask)?;
            let (rows, cols) = (w.rows(), w.cols());
            let offsets = w.row_offsets().ok_or_else(|| Error::invalid("bitmask weight without row offsets"))?;
            let starts = offsets.to_vec::<u32>()?;
            blobs.push(OwnedEntry::converted(format!("{name}.compressed"), w.values(), dtype)?);
            blobs.push(OwnedEntry::of(format!("{name}.bitmask"), w.meta())?);
            blobs.push(OwnedEntry::u32s(format!("{name}.shape"), vec![2], &[rows as u32, cols as u32]));
            blobs.push(OwnedEntry::u32s(format!("{name}.row_offsets"), vec![rows], &starts[..rows]));
        } else {
            blobs.push(OwnedEntry::converted(name, t, dtype)?);
        }
    }
    let mut meta = extra.clone();
    meta.insert("format".into(), "pt".into());
    meta.entry(META_WRITE.into()).or_insert_with(crate::io::outputs::new_write_id);
    meta.insert(META_CONFIG.into(), model.config.to_hf_json(dtype)?);
    if let Some(tok) = tokenizer {
        meta.insert(META_TOKENIZER.into(), tok.to_json_string()?);
        meta.insert(META_TOKENIZER_CONFIG.into(), tok.config_json(model.config.max_position_embeddings).to_string());
    }
    if layout == WeightLayout::SparseBitmask {
        meta.insert(META_LAYOUT.into(), "sparse-bitmask".into());
    }
    write_owned(path, &blobs, &meta)
}
