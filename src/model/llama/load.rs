//! Loading and saving LLaMA weights.
//! - GGUF (llama.cpp): config from `llama.*` metadata, tensors dequantised to f32, Q and K
//!   rows un-permuted from llama.cpp's interleaved-pair RoPE layout to the Hugging Face
//!   rotate-half layout our `rope` op uses: HF row `h·hd + c·hd/2 + i` = GGUF row
//!   `h·hd + 2i + c` (head h, pair i, c ∈ {0, 1}).
//! - safetensors with HF names: config from the `sparsetune.config` metadata entry or a
//!   `config.json` beside the file; a directory means `<dir>/model.safetensors`.
//! - Saving writes HF names (f32 or bf16), `format: pt`, the config and the tokenizer in
//!   the metadata, so one file is a complete model; the decoder linears either dense
//!   (zeros where pruned) or in the compressed-tensors `sparse-bitmask` naming
//!   ([`WeightLayout`]), which loading expands back (bit-exact).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Llama, LlamaConfig, Part, Proj};
use crate::io::{write_owned, GgufFile, OwnedEntry, SafetensorsFile, Tokenizer};
use crate::{DType, Device, Error, Result, Tensor};

/// safetensors metadata key holding the HF config JSON.
pub const META_CONFIG: &str = "sparsetune.config";
/// safetensors metadata key holding the tokenizer JSON.
pub const META_TOKENIZER: &str = "sparsetune.tokenizer";

/// safetensors metadata key naming a compressed layout of the decoder linears.
pub const META_LAYOUT: &str = "sparsetune.layout";

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
        if st.info(&name).is_none() && st.info(&format!("{name}.compressed")).is_some() {
            let (dense, shape) = read_bitmask_weight(st, &name)?;
            if shape != part.shape(&config) {
                return Err(Error::ShapeMismatch {
                    op: "load safetensors",
                    lhs: shape.into(),
                    rhs: part.shape(&config).into(),
                });
            }
            return Tensor::from_f32(dense, shape, dtype, device);
        }
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

/// The dense values of weight `name` stored as `name.compressed` (kept values, row-major),
/// `name.bitmask` (U8 [rows, ceil(cols/8)], bit j%8 of byte j/8), `name.shape` and
/// `name.row_offsets` (U32 [rows], the first value of each row), checked for consistency.
fn read_bitmask_weight(st: &SafetensorsFile, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let bad = |msg: String| Error::format(st.path(), "sparse-bitmask", format!("{name}: {msg}"));
    let ints = |suffix: &str| -> Result<Vec<u32>> {
        let key = format!("{name}.{suffix}");
        match st.info(&key) {
            Some((DType::U32, _)) => Ok(st
                .tensor_bytes(&key)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            _ => Err(bad(format!("{key} must be U32"))),
        }
    };
    let shape: Vec<usize> = ints("shape")?.into_iter().map(|d| d as usize).collect();
    let [rows, cols] = shape[..] else { return Err(bad(format!("shape {shape:?} is not 2-D"))) };
    let offsets = ints("row_offsets")?;
    let values = st.tensor_f32(&format!("{name}.compressed"))?;
    let mask_key = format!("{name}.bitmask");
    if st.info(&mask_key) != Some((DType::U8, vec![rows, crate::sparse::BitMask::stride_for(cols)])) {
        return Err(bad(format!("{mask_key} must be U8 [{rows}, {}]", cols.div_ceil(8))));
    }
    let mask = crate::sparse::BitMask::from_bytes(rows, cols, st.tensor_bytes(&mask_key)?.to_vec())?;
    if offsets.len() != rows || mask.kept() != values.len() {
        return Err(bad(format!(
            "{} row offsets for {rows} rows, {} kept bits for {} values",
            offsets.len(),
            mask.kept(),
            values.len()
        )));
    }
    let mut dense = vec![0f32; rows * cols];
    let mut next = 0usize;
    for r in 0..rows {
        if offsets[r] as usize != next {
            return Err(bad(format!("row {r} starts at value {}, the bitmask says {next}", offsets[r])));
        }
        for c in (0..cols).filter(|&c| mask.get(r, c)) {
            dense[r * cols + c] = values[next];
            next += 1;
        }
    }
    Ok((dense, shape))
}

/// How `save_safetensors_as` stores the decoder linears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// Dense HF tensors (zeros where pruned): loads in transformers unchanged.
    Dense,
    /// compressed-tensors `sparse-bitmask` naming: `P.compressed` (kept values, 1-D),
    /// `P.bitmask` (U8 [rows, ceil(cols/8)]), `P.shape` (U32 [2]), `P.row_offsets` (U32
    /// [rows]) for every decoder linear P; other tensors dense.
    SparseBitmask,
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
    meta.insert(META_CONFIG.into(), model.config.to_hf_json());
    if let Some(tok) = tokenizer {
        meta.insert(META_TOKENIZER.into(), tok.to_json_string()?);
    }
    if layout == WeightLayout::SparseBitmask {
        meta.insert(META_LAYOUT.into(), "sparse-bitmask".into());
    }
    write_owned(path, &blobs, &meta)
}
