//! Writing a model as Hugging Face loads it: [`ModelWriter`], streamed a tensor at a time.
//!
//! `--out PATH`: a path ending in `.safetensors` is one file that is a complete model
//! (config and tokenizer in its metadata, \[`super::load`\]'s single-file form); any other
//! path is a directory as transformers' `save_pretrained` writes it:
//! - `config.json`: the source's own `config.json` with every key kept (they all still
//!   hold: pruning and merging change values, not shapes) but the dtype (`torch_dtype` /
//!   `dtype`) set to the output dtype; from a GGUF model, [`LlamaConfig::to_hf_map`] with
//!   the tokenizer's BOS/EOS ids. Either is read back and checked to describe the model;
//! - `generation_config.json` copied when the source directory has one;
//! - the tokenizer: the source directory's tokenizer files copied; otherwise (GGUF, or a
//!   file with the tokenizer in its metadata) `tokenizer.json` with a post-processor that
//!   adds BOS/EOS as ours does, and `tokenizer_config.json` with BOS/EOS, whether they are
//!   added, and the chat template;
//! - the weights in [`Part::all`] order, as `model.safetensors`, or as shards
//!   `model-0000k-of-0000n.safetensors` of at most `max_shard_bytes` each (a tensor larger
//!   than that gets a shard of its own) with `model.safetensors.index.json` (`weight_map`,
//!   `metadata.total_size`).
//!
//! The tensors' names, dtypes and shapes are known from the config, so every header is
//! written before the first tensor's data, and a model is written a layer at a time as
//! its layers are produced. Shards go to temporary names and are renamed into place at
//! [`ModelWriter::finish`], then the index, then the side files; the files of an earlier
//! model in the directory that the new one does not use (any of [`is_model_file`]: another
//! model's shards, index, tokenizer or generation files), and the temporary files of
//! killed writes, are removed last, so that the directory holds exactly the new model. A
//! run killed at any point leaves each file whole, the previous one or the new one.
//!
//! Every weights file (and the index) carries one write id (`sparsetune.write`), so that a
//! directory left with shards of two writes (a kill between two renames) is refused at
//! load instead of read as one model, and the output that wrote it
//! ([`META_WRITTEN_BY`], taken from [`OutputSpec::metadata`]); the first weights file of a
//! directory lists the side files with their content hashes ([`META_FILES`]): with them
//! [`crate::io::outputs`] recognises an earlier output as its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::source::{INDEX_FILE, META_CONFIG, META_TOKENIZER, META_TOKENIZER_CONFIG, META_WRITE};
use super::{dtype_to_hf, Llama, LlamaConfig, ModelSource, Part};
use crate::io::outputs::{hash_bytes, new_write_id, META_FILES, META_WRITTEN_BY};
use crate::io::{write_atomic, PlannedFile, SafetensorsWriter, TensorSpec, Tokenizer};
use crate::{DType, Error, Result, Tensor};

/// transformers' default `max_shard_size`, "5GB" (decimal).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Tokenizer files of a Hugging Face directory, copied when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
];

/// Whether `name` is a file of a Hugging Face model directory as this writer or
/// transformers writes one (weights `model.safetensors` / `model-*.safetensors`, their
/// index, `pytorch_model*.bin` and its index, `config.json`, `generation_config.json`, the
/// tokenizer files), or the temporary file `<name>.tmp-<pid>` of a write of one: what
/// replacing a model may remove.
pub fn is_model_file(name: &str) -> bool {
    let base = match name.rsplit_once(".tmp-") {
        Some((base, pid)) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    };
    base == "config.json"
        || base == "generation_config.json"
        || TOKENIZER_FILES.contains(&base)
        || base == "model.safetensors"
        || (base.starts_with("model-") && base.ends_with(".safetensors"))
        || base == INDEX_FILE
        || (base.starts_with("pytorch_model") && (base.ends_with(".bin") || base.ends_with(".bin.index.json")))
}

/// Parses `--max-shard-size`: bytes, or a number with KB/MB/GB (decimal, as transformers)
/// or KiB/MiB/GiB.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        _ => return Err(Error::invalid(format!("size '{s}': expected e.g. 5GB, 500MB or 2GiB"))),
    };
    let v: f64 = num.parse().map_err(|_| Error::invalid(format!("size '{s}': expected e.g. 5GB, 500MB or 2GiB")))?;
    let bytes = v * scale as f64;
    if !(1.0..1e18).contains(&bytes) {
        return Err(Error::invalid(format!("size '{s}' is out of range")));
    }
    Ok(bytes as u64)
}

/// How `--out` is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputForm {
    /// One `.safetensors` file with the config and tokenizer in its metadata.
    File,
    /// A Hugging Face directory, shards of at most this many bytes.
    Directory {
        /// Largest shard (a single larger tensor gets its own).
        max_shard_bytes: u64,
    },
}

impl OutputForm {
    /// The form `out` asks for: a `.safetensors` path is one file, anything else a
    /// directory.
    pub fn of(out: &Path, max_shard_bytes: u64) -> OutputForm {
        if out.extension().is_some_and(|e| e == "safetensors") {
            OutputForm::File
        } else {
            OutputForm::Directory { max_shard_bytes }
        }
    }
}

/// Everything written beside the weights.
pub struct OutputSpec<'a> {
    /// The model's config (the written one must read back to it).
    pub config: &'a LlamaConfig,
    /// Where the model came from: its config.json keys, generation config and tokenizer
    /// files are carried over.
    pub source: Option<&'a ModelSource>,
    /// The tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// dtype of the weights.
    pub dtype: DType,
    /// Extra safetensors metadata (reports), put in the first weights file; its
    /// [`META_WRITTEN_BY`] (the output writing the model) goes into every weights file and
    /// the index.
    pub metadata: BTreeMap<String, String>,
}

/// The files of a directory being written.
struct DirPlan {
    dir: PathBuf,
    index: Option<Value>,
    /// Weights files the new model uses.
    weights: Vec<PathBuf>,
}

/// A model being written, a tensor at a time, in [`Part::all`] order (see the module doc).
pub struct ModelWriter<'a> {
    writer: SafetensorsWriter,
    spec: OutputSpec<'a>,
    dir: Option<DirPlan>,
}

/// The weights' tensors in file order.
fn tensor_specs(config: &LlamaConfig, dtype: DType) -> Vec<TensorSpec> {
    Part::all(config).iter().map(|p| TensorSpec { name: p.hf_name(), dtype, shape: p.shape(config) }).collect()
}

/// Greedy sharding in order: a shard takes tensors while they fit in `max` bytes; a tensor
/// larger than `max` gets a shard of its own.
pub fn plan_shards(specs: Vec<TensorSpec>, max: u64) -> Result<Vec<Vec<TensorSpec>>> {
    let mut shards: Vec<Vec<TensorSpec>> = Vec::new();
    let mut used = 0u64;
    for t in specs {
        let n = t.byte_len()? as u64;
        match shards.last_mut() {
            Some(cur) if !cur.is_empty() && used + n <= max => {
                cur.push(t);
                used += n;
            }
            _ => {
                shards.push(vec![t]);
                used = n;
            }
        }
    }
    Ok(shards)
}

impl<'a> ModelWriter<'a> {
    /// Plans the output at `out` in `form` (nothing is written before the first tensor).
    pub fn create(out: &Path, form: OutputForm, spec: OutputSpec<'a>) -> Result<ModelWriter<'a>> {
        if !spec.dtype.is_compute_float() && spec.dtype != DType::F16 {
            return Err(Error::invalid(format!("output dtype must be f32, bf16 or f16, not {}", spec.dtype)));
        }
        let specs = tensor_specs(spec.config, spec.dtype);
        // Room in the first header for the report known only at the end.
        let reserve = (64 << 10) + (4 << 10) * spec.config.num_hidden_layers;
        // One id for this write in every weights file and in the index: shards of two
        // writes (a run killed between two renames) are refused at load.
        let mut stamp = BTreeMap::from([("format".to_string(), "pt".to_string()), (META_WRITE.into(), new_write_id())]);
        if let Some(by) = spec.metadata.get(META_WRITTEN_BY) {
            stamp.insert(META_WRITTEN_BY.into(), by.clone());
        }
        let mut meta = spec.metadata.clone();
        meta.extend(stamp.clone());
        match form {
            OutputForm::File => {
                meta.insert(META_CONFIG.into(), spec.config.to_hf_json(spec.dtype)?);
                meta.insert(META_TOKENIZER.into(), spec.tokenizer.to_json_string()?);
                meta.insert(
                    META_TOKENIZER_CONFIG.into(),
                    spec.tokenizer.config_json(spec.config.max_position_embeddings).to_string(),
                );
                let file = PlannedFile { path: out.to_path_buf(), tensors: specs, metadata: meta, reserve };
                let writer = SafetensorsWriter::create(vec![file])?;
                Ok(ModelWriter { writer, spec, dir: None })
            }
            OutputForm::Directory { max_shard_bytes } => {
                std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
                remove_stale_model_temps(out)?;
                let shards = plan_shards(specs, max_shard_bytes)?;
                let n = shards.len();
                let name = |i: usize| {
                    if n == 1 {
                        "model.safetensors".to_string()
                    } else {
                        format!("model-{:05}-of-{n:05}.safetensors", i + 1)
                    }
                };
                let mut weight_map = Map::new();
                let (mut total, mut params) = (0u64, 0u64);
                let mut files = Vec::with_capacity(n);
                for (i, tensors) in shards.into_iter().enumerate() {
                    for t in &tensors {
                        weight_map.insert(t.name.clone(), name(i).into());
                        total += t.byte_len()? as u64;
                        params += t.shape.iter().product::<usize>() as u64;
                    }
                    let (metadata, reserve) = if i == 0 { (meta.clone(), reserve) } else { (stamp.clone(), 0) };
                    files.push(PlannedFile { path: out.join(name(i)), tensors, metadata, reserve });
                }
                let index = (n > 1).then(|| {
                    let mut metadata = serde_json::json!({ "total_size": total, "total_parameters": params });
                    for (k, v) in &stamp {
                        if k != "format" {
                            metadata[k] = v.clone().into();
                        }
                    }
                    serde_json::json!({ "metadata": metadata, "weight_map": weight_map })
                });
                let weights = files.iter().map(|f| f.path.clone()).collect();
                let writer = SafetensorsWriter::create(files)?;
                Ok(ModelWriter { writer, spec, dir: Some(DirPlan { dir: out.to_path_buf(), index, weights }) })
            }
        }
    }

    /// Writes the next tensor, `part`, converted to the output dtype.
    pub fn put(&mut self, part: &Part, t: &Tensor) -> Result<()> {
        let want = part.shape(self.spec.config);
        if t.dims() != want.as_slice() {
            return Err(Error::ShapeMismatch { op: "write model", lhs: t.shape().clone(), rhs: want.into() });
        }
        let bytes = if t.dtype() == self.spec.dtype {
            t.to_le_bytes()?
        } else {
            let host = if t.device().is_cuda() { t.to_device(&crate::Device::cpu())? } else { t.clone() };
            host.to_dtype(self.spec.dtype)?.to_le_bytes()?
        };
        self.writer.put(&part.hf_name(), &bytes)
    }

    /// Writes every tensor of an in-memory model; each compressed or adapted linear is
    /// merged into a dense weight as its turn comes (one at a time, never the whole model).
    pub fn put_model(&mut self, model: &Llama) -> Result<()> {
        self.put(&Part::Embed, &model.embed)?;
        for (l, layer) in model.layers.iter().enumerate() {
            self.put(&Part::InputNorm(l), &layer.input_norm)?;
            for p in super::Proj::ALL {
                self.put(&Part::Linear(l, p), &layer.linear(p).merged()?)?;
            }
            self.put(&Part::PostNorm(l), &layer.post_norm)?;
        }
        self.put(&Part::Norm, &model.norm)?;
        if let Some(h) = &model.lm_head {
            self.put(&Part::LmHead, h)?;
        }
        Ok(())
    }

    /// After the last tensor: adds `report` (and, for a directory, the side files' hashes)
    /// to the first file's metadata, puts the weights in place, then the index and the side
    /// files, and removes the files of an earlier model that the new one does not use.
    pub fn finish(self, mut report: BTreeMap<String, String>) -> Result<()> {
        let ModelWriter { writer, spec, dir } = self;
        let Some(plan) = dir else { return writer.finish(report) };
        let side = side_files(&spec)?;
        let hashes: BTreeMap<&str, String> =
            side.iter().map(|(name, bytes)| (name.as_str(), hash_bytes(bytes))).collect();
        report.insert(META_FILES.into(), serde_json::to_string(&hashes).map_err(|e| Error::invalid(e.to_string()))?);
        writer.finish(report)?;
        let index_path = plan.dir.join(INDEX_FILE);
        if let Some(index) = &plan.index {
            let text = serde_json::to_string_pretty(index).map_err(|e| Error::invalid(e.to_string()))?;
            write_atomic(&index_path, text.as_bytes())?;
        }
        let mut new_files: Vec<PathBuf> = plan.weights.clone();
        for (name, bytes) in side {
            let path = plan.dir.join(name);
            write_atomic(&path, &bytes)?;
            new_files.push(path);
        }
        // The files of an earlier model: a leftover index would be read before the new
        // model.safetensors, so it goes first.
        if plan.index.is_none() && index_path.exists() {
            std::fs::remove_file(&index_path).map_err(|e| Error::io(&index_path, e))?;
        } else if plan.index.is_some() {
            new_files.push(index_path);
        }
        for entry in std::fs::read_dir(&plan.dir).map_err(|e| Error::io(&plan.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&plan.dir, e))?;
            let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
            let temp = name.contains(".tmp-");
            let old = is_model_file(&name) && !new_files.contains(&path) && !path.is_dir();
            if old && (!temp || crate::io::is_stale_temp(&name)) {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }
}

/// Removes what killed writes of model files left in `dir` (`<name>.tmp-<dead pid>`),
/// before a new write starts.
fn remove_stale_model_temps(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_model_file(&name) && crate::io::is_stale_temp(&name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The `config.json` for `spec`: the source's keys with the dtype updated, or our own.
fn config_json(spec: &OutputSpec<'_>) -> Result<Map<String, Value>> {
    let dtype_name = Value::String(dtype_to_hf(spec.dtype).into());
    let map = match spec.source.and_then(ModelSource::hf_config) {
        Some(src) => {
            let mut map = src.clone();
            let mut set = false;
            for key in ["torch_dtype", "dtype"] {
                if map.contains_key(key) {
                    map.insert(key.into(), dtype_name.clone());
                    set = true;
                }
            }
            if !set {
                map.insert("torch_dtype".into(), dtype_name);
            }
            map
        }
        None => {
            let mut map = spec.config.to_hf_map(spec.dtype)?;
            map.insert("bos_token_id".into(), spec.tokenizer.bos_token_id().into());
            map.insert("eos_token_id".into(), spec.tokenizer.eos_token_id().into());
            map
        }
    };
    let back = LlamaConfig::from_hf_map(&map, "the config.json to write")?;
    if &back != spec.config {
        return Err(Error::Config(format!(
            "the config.json to write does not describe the model: it reads as {back:?}, the model is {:?}",
            spec.config
        )));
    }
    Ok(map)
}

/// (file name, contents) of everything beside the weights.
fn side_files(spec: &OutputSpec<'_>) -> Result<Vec<(String, Vec<u8>)>> {
    let json = |v: &Value| -> Result<Vec<u8>> {
        let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::invalid(e.to_string()))?;
        s.push('\n');
        Ok(s.into_bytes())
    };
    let mut out = vec![("config.json".to_string(), json(&Value::Object(config_json(spec)?))?)];
    // Regular files only, of bounded size: a FIFO beside the source must not block the write.
    let read = |p: &Path| crate::io::read_regular(p, crate::io::regular::MAX_TOKENIZER_BYTES);
    if let Some(dir) = spec.source.and_then(ModelSource::config_dir) {
        let gen = dir.join("generation_config.json");
        if gen.is_file() {
            out.push(("generation_config.json".into(), read(&gen)?));
        }
    }
    match spec.source.and_then(ModelSource::tokenizer_dir) {
        Some(dir) => {
            for name in TOKENIZER_FILES {
                let p = dir.join(name);
                if p.is_file() {
                    out.push((name.to_string(), read(&p)?));
                }
            }
        }
        None => {
            let tok = spec.tokenizer;
            out.push(("tokenizer.json".into(), tok.to_json_string_for_export()?.into_bytes()));
            out.push(("tokenizer_config.json".into(), json(&tok.config_json(spec.config.max_position_embeddings))?));
        }
    }
    Ok(out)
}

/// Writes an in-memory model at `out` in `form` (see [`ModelWriter`]; adapted or
/// compressed linears are merged one at a time).
pub fn save_model(model: &Llama, out: &Path, form: OutputForm, spec: OutputSpec<'_>) -> Result<()> {
    let mut w = ModelWriter::create(out, form, spec)?;
    w.put_model(model)?;
    w.finish(BTreeMap::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_transformers_counts_them() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("25KB").unwrap(), 25_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0GB").is_err());
    }

    #[test]
    fn shards_take_tensors_in_order_while_they_fit() {
        let t = |name: &str, n: usize| TensorSpec { name: name.into(), dtype: DType::U8, shape: vec![n] };
        let plan = plan_shards(vec![t("a", 4), t("b", 4), t("c", 9), t("d", 1), t("e", 8)], 8).unwrap();
        let names: Vec<Vec<&str>> = plan.iter().map(|s| s.iter().map(|t| t.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
    }
}
