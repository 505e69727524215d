//! Loading and saving LLaMA weights.
//! - GGUF (llama.cpp): config from `llama.*` metadata, tensors dequantised to f32, Q and K
//!   rows un-permuted from llama.cpp's interleaved-pair RoPE layout to the Hugging Face
//!   rotate-half layout our `rope` op uses: HF row `h·hd + c·hd/2 + i` = GGUF row
//!   `h·hd + 2i + c` (head h, pair i, c ∈ {0, 1}).
//! - safetensors with HF names: config from the `sparsetune.config` metadata entry or a
//!   `config.json` beside the file; a directory means `<dir>/model.safetensors`.
//! - Saving writes HF names (f32 or bf16), `format: pt`, the config and the tokenizer in
//!   the metadata, so one file is a complete model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Llama, LlamaConfig, Part, Proj};
use crate::io::{write_safetensors, GgufFile, SafetensorsEntry, SafetensorsFile, Tokenizer};
use crate::{DType, Device, Error, Result, Tensor};

/// safetensors metadata key holding the HF config JSON.
pub const META_CONFIG: &str = "sparsetune.config";
/// safetensors metadata key holding the tokenizer JSON.
pub const META_TOKENIZER: &str = "sparsetune.tokenizer";

/// A model file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// llama.cpp GGUF.
    Gguf,
    /// Hugging Face safetensors.
    Safetensors,
}

/// Resolves a model path (a file, or a directory holding `model.safetensors`) and sniffs
/// its format from the first bytes.
pub fn resolve(path: &Path) -> Result<(PathBuf, ModelFormat)> {
    let file = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
    let mut head = [0u8; 8];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&file).map_err(|e| Error::io(&file, e))?;
        let n = f.read(&mut head).map_err(|e| Error::io(&file, e))?;
        if n < 8 {
            return Err(Error::format(&file, "model", "file is shorter than 8 bytes"));
        }
    }
    if &head[..4] == b"GGUF" {
        Ok((file, ModelFormat::Gguf))
    } else if head[..8].iter().any(|&b| b != 0) && u64::from_le_bytes(head) < (1 << 30) {
        Ok((file, ModelFormat::Safetensors))
    } else {
        Err(Error::format(&file, "model", "neither GGUF (magic 'GGUF') nor safetensors"))
    }
}

/// Loads a model onto `device` in `dtype` (F32 or BF16).
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Llama> {
    if !dtype.is_compute_float() {
        return Err(Error::invalid(format!("model dtype must be f32 or bf16, not {dtype}")));
    }
    let (file, format) = resolve(path)?;
    match format {
        ModelFormat::Gguf => load_gguf(&GgufFile::open(&file)?, device, dtype),
        ModelFormat::Safetensors => load_safetensors(&SafetensorsFile::open(&file)?, device, dtype),
    }
}

/// The tokenizer stored with a model: GGUF metadata, the safetensors metadata entry, or a
/// `tokenizer.json` beside the file.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let (file, format) = resolve(path)?;
    match format {
        ModelFormat::Gguf => Tokenizer::from_gguf(&GgufFile::open(&file)?),
        ModelFormat::Safetensors => {
            let st = SafetensorsFile::open(&file)?;
            if let Some(json) = st.metadata().get(META_TOKENIZER) {
                return Tokenizer::from_json_str(json);
            }
            let sibling = file.with_file_name("tokenizer.json");
            if sibling.is_file() {
                return Tokenizer::from_file(&sibling);
            }
            Err(Error::Tokenizer(format!(
                "{}: no tokenizer in the metadata and no tokenizer.json beside it",
                file.display()
            )))
        }
    }
}

/// The config of a model file without loading its weights.
pub fn load_config(path: &Path) -> Result<LlamaConfig> {
    let (file, format) = resolve(path)?;
    match format {
        ModelFormat::Gguf => LlamaConfig::from_gguf(&GgufFile::open(&file)?),
        ModelFormat::Safetensors => safetensors_config(&SafetensorsFile::open(&file)?),
    }
}

fn safetensors_config(st: &SafetensorsFile) -> Result<LlamaConfig> {
    if let Some(json) = st.metadata().get(META_CONFIG) {
        return LlamaConfig::from_hf_json(json);
    }
    let sibling = st.path().with_file_name("config.json");
    let text = std::fs::read_to_string(&sibling).map_err(|e| {
        Error::Config(format!(
            "{}: no '{META_CONFIG}' metadata and no readable config.json beside it ({e})",
            st.path().display()
        ))
    })?;
    LlamaConfig::from_hf_json(&text)
}

/// Reorders the rows of a Q or K weight [heads·hd, cols] from llama.cpp's interleaved
/// pairs to the rotate-half layout.
pub fn unpermute_rows(data: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for c in 0..2 {
                let src = (h * head_dim + 2 * i + c) * cols;
                let dst = (h * head_dim + c * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

/// Loads from an open GGUF file.
pub fn load_gguf(f: &GgufFile, device: &Device, dtype: DType) -> Result<Llama> {
    let config = LlamaConfig::from_gguf(f)?;
    let hd = config.head_dim();
    Llama::from_named(config.clone(), |part| {
        let name = part.gguf_name();
        let info = f
            .tensor_info(&name)
            .ok_or_else(|| Error::MissingTensor { path: f.path().to_path_buf(), name: name.clone() })?;
        let shape = info.shape.clone();
        if shape != part.shape(&config) {
            return Err(Error::ShapeMismatch { op: "load gguf", lhs: shape.into(), rhs: part.shape(&config).into() });
        }
        let mut data = f.tensor_f32(&name)?;
        match part {
            Part::Linear(_, Proj::Q) => {
                data = unpermute_rows(&data, config.num_attention_heads, hd, config.hidden_size)
            }
            Part::Linear(_, Proj::K) => {
                data = unpermute_rows(&data, config.num_key_value_heads, hd, config.hidden_size)
            }
            _ => {}
        }
        Tensor::from_f32(data, shape, dtype, device)
    })
}

/// Loads from an open safetensors file with HF names.
pub fn load_safetensors(st: &SafetensorsFile, device: &Device, dtype: DType) -> Result<Llama> {
    let config = safetensors_config(st)?;
    Llama::from_named(config.clone(), |part| {
        let name = part.hf_name();
        let (_, shape) =
            st.info(&name).ok_or_else(|| Error::MissingTensor { path: st.path().to_path_buf(), name: name.clone() })?;
        if shape != part.shape(&config) {
            return Err(Error::ShapeMismatch {
                op: "load safetensors",
                lhs: shape.into(),
                rhs: part.shape(&config).into(),
            });
        }
        Tensor::from_f32(st.tensor_f32(&name)?, shape, dtype, device)
    })
}

/// Writes `model` as HF-named safetensors in `dtype` (F32 or BF16), with the config, the
/// tokenizer (if given) and `extra` in the metadata. The write is atomic.
pub fn save_safetensors(
    model: &Llama,
    path: &Path,
    dtype: DType,
    tokenizer: Option<&Tokenizer>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    if !dtype.is_compute_float() {
        return Err(Error::invalid(format!("export dtype must be f32 or bf16, not {dtype}")));
    }
    let mut blobs = Vec::new();
    for (part, t) in model.named_tensors()? {
        let bytes: Vec<u8> = match dtype {
            DType::BF16 => bytemuck::cast_slice(&t.to_dtype(DType::BF16)?.to_vec::<half::bf16>()?).to_vec(),
            _ => bytemuck::cast_slice(&t.to_f32_vec()?).to_vec(),
        };
        blobs.push((part.hf_name(), t.dims().to_vec(), bytes));
    }
    let entries: Vec<SafetensorsEntry<'_>> = blobs
        .iter()
        .map(|(name, shape, data)| SafetensorsEntry { name: name.clone(), dtype, shape: shape.clone(), data })
        .collect();
    let mut meta = extra.clone();
    meta.insert("format".into(), "pt".into());
    meta.insert(META_CONFIG.into(), model.config.to_hf_json());
    if let Some(tok) = tokenizer {
        meta.insert(META_TOKENIZER.into(), tok.to_json_string()?);
    }
    write_safetensors(path, &entries, &meta)
}
