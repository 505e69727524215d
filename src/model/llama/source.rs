//! Where a model's weights come from, read one tensor at a time: [`ModelSource`].
//!
//! `--model` may be
//! - a GGUF file (llama.cpp): config from `llama.*` metadata, tensors dequantised to f32,
//!   Q and K rows un-permuted from llama.cpp's interleaved-pair RoPE layout to the Hugging
//!   Face rotate-half layout our `rope` op uses: HF row `h·hd + c·hd/2 + i` = GGUF row
//!   `h·hd + 2i + c` (head h, pair i, c ∈ {0, 1});
//! - a `.safetensors` file with HF names: config from its `sparsetune.config` metadata
//!   entry, else the `config.json` beside it;
//! - a `model.safetensors.index.json`: its `weight_map` names each tensor's shard (plain
//!   file names in the index's directory, any number of them); config from the
//!   `config.json` beside it;
//! - a directory: its `model.safetensors.index.json` or its `model.safetensors` (one of
//!   them: a directory holding both is refused as ambiguous, since one is left over from
//!   another write).
//!
//! safetensors tensors are F32, BF16 or F16, memory-mapped, and read in their stored dtype
//! (converted on the host only when another dtype is asked for); the decoder linears may be
//! dense (zeros where pruned) or in the compressed-tensors `sparse-bitmask` layout, which
//! is expanded. Every tensor in the files must be one the model uses: anything else (a
//! bias, another architecture's weight) is refused by name rather than ignored. The only
//! extras accepted are GGUF `rope_freqs.weight` (RoPE frequency factors, read into the
//! config) and old checkpoints' `rotary_emb.inv_freq` buffers when they equal the
//! frequencies the config gives.
//!
//! The tokenizer: GGUF metadata; a single file's `sparsetune.tokenizer` (and
//! `sparsetune.tokenizer_config`) metadata; else `tokenizer.json` and
//! `tokenizer_config.json` in the model's directory. It may have fewer ids than the
//! embedding has rows (padded embeddings), never more.
//!
//! Every file is treated as hostile: only regular files (or links to them) are opened
//! ([`crate::io::open_regular`]: a FIFO is refused, not waited on), JSON side files are
//! size-bounded before they are read, a sharded checkpoint's shards must come from one
//! write, every float tensor is checked for NaN and infinities as it is read, and a stored
//! shape the config does not imply is refused naming the tensor and its file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{DecoderLayer, Llama, LlamaConfig, Part, Proj};
use crate::io::regular::{open_regular, read_regular_to_string, MAX_CONFIG_BYTES};
use crate::io::{GgufFile, SafetensorsFile, Tokenizer};
use crate::nn::Linear;
use crate::{DType, Device, Error, Result, Tensor};

/// safetensors metadata key holding the HF config JSON.
pub const META_CONFIG: &str = "sparsetune.config";
/// safetensors metadata key holding the tokenizer JSON.
pub const META_TOKENIZER: &str = "sparsetune.tokenizer";
/// safetensors metadata key holding the `tokenizer_config.json` object.
pub const META_TOKENIZER_CONFIG: &str = "sparsetune.tokenizer_config";
/// safetensors metadata key naming a compressed layout of the decoder linears.
pub const META_LAYOUT: &str = "sparsetune.layout";
/// Metadata key (in each shard and in the index's `metadata`) with the id of the write
/// that produced a sharded directory: shards from two writes are refused.
pub const META_WRITE: &str = "sparsetune.write";
/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A model file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// llama.cpp GGUF.
    Gguf,
    /// Hugging Face safetensors (one file or shards).
    Safetensors,
}

enum Files {
    Gguf(GgufFile),
    Safetensors {
        shards: Vec<SafetensorsFile>,
        /// Tensor name → shard.
        shard_of: HashMap<String, usize>,
    },
}

/// An opened model: config, and its weights read on demand.
pub struct ModelSource {
    path: PathBuf,
    config: LlamaConfig,
    hf_config: Option<Map<String, Value>>,
    dir: Option<PathBuf>,
    /// The config came from `dir/config.json` (not from metadata).
    config_file: bool,
    files: Files,
}

impl std::fmt::Debug for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSource").field("path", &self.path).field("format", &self.format()).finish()
    }
}

/// The format of `file` from its first bytes.
fn sniff(file: &Path) -> Result<ModelFormat> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f = open_regular(file)?;
    let n = f.read(&mut head).map_err(|e| Error::io(file, e))?;
    if n < 8 {
        return Err(Error::format(file, "model", "file is shorter than 8 bytes"));
    }
    if &head[..4] == b"GGUF" {
        Ok(ModelFormat::Gguf)
    } else if head.iter().any(|&b| b != 0) && u64::from_le_bytes(head) < (1 << 30) {
        Ok(ModelFormat::Safetensors)
    } else {
        Err(Error::format(file, "model", "neither GGUF (magic 'GGUF') nor safetensors"))
    }
}

/// A shard named by an index: a plain file name in the index's directory.
fn shard_path(index: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && Path::new(name).file_name().is_some_and(|f| f == name);
    if !plain {
        return Err(Error::format(index, "safetensors index", format!("shard '{name}' is not a plain file name")));
    }
    Ok(dir.join(name))
}

/// Whether anything (a file, a directory, a FIFO, a dangling link) is at `path`: what is
/// there is then opened, and refused by name if it is not a regular file, instead of being
/// passed over as absent.
fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Reads `config.json` in `dir` (a regular file of at most [`MAX_CONFIG_BYTES`]); `why`
/// explains what needs it when there is none.
fn read_config_json(dir: &Path, why: &str) -> Result<(LlamaConfig, Map<String, Value>)> {
    let path = dir.join("config.json");
    if !present(&path) {
        return Err(Error::Config(format!("{}: {why} (there is none)", path.display())));
    }
    let text = read_regular_to_string(&path, MAX_CONFIG_BYTES)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let map =
        value.as_object().cloned().ok_or_else(|| Error::Config(format!("{}: not a JSON object", path.display())))?;
    Ok((LlamaConfig::from_hf_map(&map, &path.display().to_string())?, map))
}

impl ModelSource {
    /// Opens a model (see the module doc for what `path` may be); reads headers and the
    /// config, maps the files, and checks that every tensor is one the model uses.
    pub fn open(path: &Path) -> Result<ModelSource> {
        let (file, index) = if path.is_dir() {
            // The config first: a refused key is named before anything else is looked at.
            if present(&path.join("config.json")) {
                read_config_json(path, "unreadable")?;
            }
            let index = path.join(INDEX_FILE);
            let single = path.join("model.safetensors");
            match (present(&index), present(&single)) {
                (true, true) => {
                    return Err(Error::invalid(format!(
                        "{}: holds both {INDEX_FILE} (a sharded model) and model.safetensors (a one-file \
                         model), so which one is the model is ambiguous (one was left by another write, \
                         e.g. an old index that could not be removed): remove the one that does not \
                         belong, or name the file to load",
                        path.display()
                    )))
                }
                (true, false) => (index, true),
                (false, true) => (single, false),
                (false, false) => {
                    return Err(Error::invalid(format!(
                        "{}: a model directory needs {INDEX_FILE} or model.safetensors",
                        path.display()
                    )))
                }
            }
        } else {
            let index = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json"));
            (path.to_path_buf(), index)
        };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let source = if index {
            Self::open_index(path, &file, &dir)?
        } else {
            match sniff(&file)? {
                ModelFormat::Gguf => {
                    let g = GgufFile::open(&file)?;
                    let config = LlamaConfig::from_gguf(&g)?;
                    ModelSource {
                        path: path.to_path_buf(),
                        config,
                        hf_config: None,
                        dir: None,
                        config_file: false,
                        files: Files::Gguf(g),
                    }
                }
                ModelFormat::Safetensors => {
                    let st = SafetensorsFile::open(&file)?;
                    let config_file = !st.metadata().contains_key(META_CONFIG);
                    let (config, map) = match st.metadata().get(META_CONFIG) {
                        Some(json) => {
                            let origin = format!("{} (metadata {META_CONFIG})", file.display());
                            let value: Value =
                                serde_json::from_str(json).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
                            let map = value
                                .as_object()
                                .cloned()
                                .ok_or_else(|| Error::Config(format!("{origin}: not a JSON object")))?;
                            (LlamaConfig::from_hf_map(&map, &origin)?, map)
                        }
                        None => read_config_json(
                            &dir,
                            &format!(
                                "no '{META_CONFIG}' metadata in {}, and no readable config.json beside it",
                                file.display()
                            ),
                        )?,
                    };
                    let shard_of = st.names().into_iter().map(|n| (n.to_owned(), 0)).collect();
                    ModelSource {
                        path: path.to_path_buf(),
                        config,
                        hf_config: Some(map),
                        dir: Some(dir),
                        config_file,
                        files: Files::Safetensors { shards: vec![st], shard_of },
                    }
                }
            }
        };
        source.check_tensors()?;
        Ok(source)
    }

    fn open_index(given: &Path, index: &Path, dir: &Path) -> Result<ModelSource> {
        let bad = |msg: String| Error::format(index, "safetensors index", msg);
        let text = read_regular_to_string(index, MAX_CONFIG_BYTES)?;
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map =
            json.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("no 'weight_map' object".into()))?;
        let mut shard_names: BTreeMap<String, usize> = BTreeMap::new();
        let mut listed: HashMap<String, String> = HashMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| bad(format!("weight_map['{tensor}'] is not a file name")))?;
            shard_path(index, dir, shard)?;
            let next = shard_names.len();
            shard_names.entry(shard.to_owned()).or_insert(next);
            listed.insert(tensor.clone(), shard.to_owned());
        }
        if shard_names.is_empty() {
            return Err(bad("the weight_map is empty".into()));
        }
        let mut order: Vec<(&String, &usize)> = shard_names.iter().collect();
        order.sort_by_key(|(_, i)| **i);
        let mut shards = Vec::with_capacity(order.len());
        let mut shard_of = HashMap::new();
        for (i, (name, _)) in order.iter().enumerate() {
            let st = SafetensorsFile::open(shard_path(index, dir, name)?)?;
            for t in st.names() {
                match listed.get(t) {
                    Some(s) if s == *name => {}
                    Some(s) => return Err(bad(format!("tensor '{t}' is in {name} but the weight_map puts it in {s}"))),
                    None => return Err(bad(format!("tensor '{t}' of {name} is not in the weight_map"))),
                }
                shard_of.insert(t.to_owned(), i);
            }
            shards.push(st);
        }
        if let Some((t, s)) = listed.iter().find(|(t, _)| !shard_of.contains_key(*t)) {
            return Err(bad(format!("the weight_map puts '{t}' in {s}, which does not hold it")));
        }
        // Written by us: every shard must come from the index's write (a run killed between
        // renaming its shards leaves some of the previous model's).
        fn write_id(st: &SafetensorsFile) -> Option<&str> {
            st.metadata().get(META_WRITE).map(String::as_str)
        }
        if let Some(id) = json.get("metadata").and_then(|m| m.get(META_WRITE)) {
            let id = id.as_str().ok_or_else(|| bad(format!("metadata.{META_WRITE} is not a string")))?;
            if let Some(st) = shards.iter().find(|st| write_id(st) != Some(id)) {
                return Err(bad(format!(
                    "{} is not from the write that made this index (metadata {META_WRITE} {:?}, the index says \
                     {id:?}): the directory holds parts of two models, as an interrupted write leaves it; \
                     write it again",
                    st.path().display(),
                    write_id(st).unwrap_or("absent")
                )));
            }
        } else {
            // No id in the index (transformers writes none, and an interrupted write of ours
            // can leave an older index): once one shard carries an id, every shard must carry
            // that one. Shards without ids anywhere (transformers' checkpoints) are accepted.
            let mut by_name: Vec<&SafetensorsFile> = shards.iter().collect();
            by_name.sort_by(|a, b| a.path().cmp(b.path()));
            if let Some((first, id)) = by_name.iter().find_map(|st| Some((st, write_id(st)?))) {
                if let Some(st) = by_name.iter().find(|st| write_id(st) != Some(id)) {
                    return Err(bad(format!(
                        "{} and {} are not from the same write (metadata {META_WRITE} {id:?} and {:?}): the \
                         directory holds parts of two models, as an interrupted write leaves it; write it again",
                        first.path().display(),
                        st.path().display(),
                        write_id(st).unwrap_or("absent")
                    )));
                }
            }
        }
        if let Some(total) = json.get("metadata").and_then(|m| m.get("total_size")) {
            let held: usize = shards.iter().map(SafetensorsFile::data_bytes).sum();
            if total.as_u64() != Some(held as u64) {
                return Err(bad(format!("metadata.total_size is {total}, the shards hold {held} bytes")));
            }
        }
        let (config, hf) = read_config_json(dir, "a sharded checkpoint needs its config.json")?;
        Ok(ModelSource {
            path: given.to_path_buf(),
            config,
            hf_config: Some(hf),
            dir: Some(dir.to_path_buf()),
            config_file: true,
            files: Files::Safetensors { shards, shard_of },
        })
    }

    /// The decoder layers the files hold: one more than the largest `model.layers.N.` /
    /// `blk.N.` index (0 when there is none).
    fn layers_in_files(&self) -> usize {
        let index = |name: &str, prefix: &str| -> Option<usize> {
            name.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok()
        };
        match &self.files {
            Files::Gguf(g) => g.tensors().iter().filter_map(|t| index(&t.name, "blk.")).max(),
            Files::Safetensors { shard_of, .. } => shard_of.keys().filter_map(|n| index(n, "model.layers.")).max(),
        }
        .map_or(0, |m| m.saturating_add(1))
    }

    /// Refuses any tensor the model does not use (see the module doc), after checking the
    /// config's layer count against the layers the files hold (so that nothing is sized
    /// by a count the files cannot back).
    fn check_tensors(&self) -> Result<()> {
        let held = self.layers_in_files();
        if self.config.num_hidden_layers != held {
            let key = match self.files {
                Files::Gguf(_) => "llama.block_count",
                Files::Safetensors { .. } => "num_hidden_layers",
            };
            return Err(Error::Config(format!(
                "{}: {key} = {} but the files hold {held} decoder layers",
                self.path.display(),
                self.config.num_hidden_layers
            )));
        }
        let parts = Part::all(&self.config);
        // Every tensor's stored shape is the config's before anything is sized by the
        // config (a dimension the file only claims stays a claim).
        for part in &parts {
            let want = part.shape(&self.config);
            let (stored, file, name) = self.stored_shape(part)?;
            if stored != want {
                return Err(self.shape_error(&file, &name, &stored, &want));
            }
        }
        match &self.files {
            Files::Gguf(g) => {
                let mut known: std::collections::HashSet<String> = parts.iter().map(Part::gguf_name).collect();
                known.insert("rope_freqs.weight".into());
                if let Some(t) = g.tensors().iter().find(|t| !known.contains(&t.name)) {
                    return Err(Error::format(
                        g.path(),
                        "GGUF",
                        format!("tensor '{}' is not part of a LLaMA model: refused", t.name),
                    ));
                }
            }
            Files::Safetensors { shards, shard_of } => {
                let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
                for p in &parts {
                    let name = p.hf_name();
                    if matches!(p, Part::Linear(..)) {
                        for suffix in ["compressed", "bitmask", "shape", "row_offsets"] {
                            known.insert(format!("{name}.{suffix}"));
                        }
                    }
                    known.insert(name);
                }
                for (name, &i) in shard_of {
                    if known.contains(name) {
                        continue;
                    }
                    let st = &shards[i];
                    let is_rope_buffer =
                        name.starts_with("model.layers.") && name.ends_with(".self_attn.rotary_emb.inv_freq");
                    if is_rope_buffer {
                        let inv_freq = self.config.rope_inv_freq();
                        let stored = st.tensor_f32(name)?;
                        let same = stored.len() == inv_freq.len()
                            && stored.iter().zip(&inv_freq).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs());
                        if same {
                            continue;
                        }
                        return Err(Error::format(
                            st.path(),
                            "safetensors",
                            format!("'{name}' differs from the RoPE frequencies the config gives: refused"),
                        ));
                    }
                    return Err(Error::format(
                        st.path(),
                        "safetensors",
                        format!("tensor '{name}' is not part of a LLaMA model (a bias, another architecture's weight?): refused"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The shape `part` is stored with, from the headers alone (for the compressed layout,
    /// its `.shape` tensor), with the file and the name of the tensor that says so; a
    /// missing tensor is an error.
    fn stored_shape(&self, part: &Part) -> Result<(Vec<usize>, PathBuf, String)> {
        match &self.files {
            Files::Gguf(g) => {
                let name = part.gguf_name();
                match g.tensor_info(&name) {
                    Some(t) => Ok((t.shape.clone(), g.path().to_path_buf(), name)),
                    None => Err(Error::MissingTensor { path: g.path().to_path_buf(), name }),
                }
            }
            Files::Safetensors { .. } => {
                let name = part.hf_name();
                if let (Some((_, shape)), Some(st)) = (self.st_info(&name), self.shard(&name)) {
                    return Ok((shape, st.path().to_path_buf(), name));
                }
                let key = format!("{name}.shape");
                match (self.u32s(&key), self.shard(&key)) {
                    (Some(shape), Some(st)) => {
                        Ok((shape?.into_iter().map(|d| d as usize).collect(), st.path().to_path_buf(), key))
                    }
                    _ => Err(Error::MissingTensor { path: self.path.clone(), name }),
                }
            }
        }
    }

    /// Where the config was read: for errors that set a file against it.
    fn config_origin(&self) -> String {
        match &self.files {
            Files::Gguf(g) => format!("the llama.* metadata of {}", g.path().display()),
            Files::Safetensors { shards, .. } => match (&self.dir, self.config_file) {
                (Some(dir), true) => dir.join("config.json").display().to_string(),
                _ => format!(
                    "metadata {META_CONFIG} of {}",
                    shards
                        .first()
                        .map_or_else(|| self.path.display().to_string(), |st| st.path().display().to_string())
                ),
            },
        }
    }

    /// The error for tensor `name` of `file` stored with a shape the config does not imply.
    fn shape_error(&self, file: &Path, name: &str, stored: &[usize], want: &[usize]) -> Error {
        let format = match self.files {
            Files::Gguf(_) => "GGUF",
            Files::Safetensors { .. } => "safetensors",
        };
        Error::format(
            file,
            format,
            format!(
                "tensor '{name}' is stored with shape {stored:?}, but the config ({}) implies {want:?}",
                self.config_origin()
            ),
        )
    }

    /// The values of the U32 tensor `key` of the compressed layout (`None` when no shard
    /// holds it; an error naming it when it is not U32).
    fn u32s(&self, key: &str) -> Option<Result<Vec<u32>>> {
        let st = self.shard(key)?;
        Some(match st.info(key) {
            Some((DType::U32, _)) => st
                .tensor_bytes(key)
                .map(|b| b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            _ => Err(Error::format(st.path(), "sparse-bitmask", format!("{key} must be U32"))),
        })
    }

    /// The safetensors metadata of the file holding the embedding: where
    /// [`super::ModelWriter`] puts its reports (e.g. `sparsetune.prune`), write id and
    /// writer. None for GGUF.
    pub fn embedding_file_metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.shard(&Part::Embed.hf_name()).map(SafetensorsFile::metadata)
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF or safetensors.
    pub fn format(&self) -> ModelFormat {
        match self.files {
            Files::Gguf(_) => ModelFormat::Gguf,
            Files::Safetensors { .. } => ModelFormat::Safetensors,
        }
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The `config.json` object as read (safetensors sources): what an exported
    /// directory keeps.
    pub fn hf_config(&self) -> Option<&Map<String, Value>> {
        self.hf_config.as_ref()
    }

    /// The directory whose `config.json` describes this model (so that its
    /// `generation_config.json` does too); `None` for GGUF and for a file carrying its
    /// config in its metadata.
    pub fn config_dir(&self) -> Option<&Path> {
        self.dir.as_deref().filter(|_| self.config_file)
    }

    /// The directory whose `tokenizer.json` (and `tokenizer_config.json`) is this model's
    /// tokenizer; `None` when the tokenizer comes from GGUF or file metadata.
    pub fn tokenizer_dir(&self) -> Option<&Path> {
        match &self.files {
            Files::Gguf(_) => None,
            Files::Safetensors { shards, .. } => {
                let in_metadata = matches!(shards.as_slice(), [st] if st.metadata().contains_key(META_TOKENIZER));
                self.dir.as_deref().filter(|d| !in_metadata && d.join("tokenizer.json").is_file())
            }
        }
    }

    /// The dtype the decoder weights are stored in: F32, BF16 or F16 for safetensors (of
    /// layer 0's q_proj), F32 for GGUF (its quantised types dequantise to f32).
    pub fn stored_dtype(&self) -> DType {
        match &self.files {
            Files::Gguf(_) => DType::F32,
            Files::Safetensors { .. } => {
                let name = Proj::Q.hf_name(0);
                self.st_info(&name)
                    .or_else(|| self.st_info(&format!("{name}.compressed")))
                    .map_or(DType::F32, |(d, _)| d)
            }
        }
    }

    fn st_info(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        match &self.files {
            Files::Safetensors { shards, shard_of } => shard_of.get(name).and_then(|&i| shards[i].info(name)),
            Files::Gguf(_) => None,
        }
    }

    fn shard(&self, name: &str) -> Option<&SafetensorsFile> {
        match &self.files {
            Files::Safetensors { shards, shard_of } => shard_of.get(name).map(|&i| &shards[i]),
            Files::Gguf(_) => None,
        }
    }

    /// One tensor of the model on `device` in `dtype` (F32 or BF16), checked against the
    /// config's shape.
    pub fn tensor(&self, part: &Part, dtype: DType, device: &Device) -> Result<Tensor> {
        if !dtype.is_compute_float() {
            return Err(Error::invalid(format!("model dtype must be f32 or bf16, not {dtype}")));
        }
        let want = part.shape(&self.config);
        match &self.files {
            Files::Gguf(f) => {
                let name = part.gguf_name();
                let info = f
                    .tensor_info(&name)
                    .ok_or_else(|| Error::MissingTensor { path: f.path().to_path_buf(), name: name.clone() })?;
                if info.shape != want {
                    return Err(self.shape_error(f.path(), &name, &info.shape, &want));
                }
                let mut data = f.tensor_f32(&name)?;
                let (c, hd) = (&self.config, self.config.head_dim());
                match part {
                    Part::Linear(_, Proj::Q) => data = unpermute_rows(&data, c.num_attention_heads, hd, c.hidden_size),
                    Part::Linear(_, Proj::K) => data = unpermute_rows(&data, c.num_key_value_heads, hd, c.hidden_size),
                    _ => {}
                }
                Tensor::from_f32(data, want, dtype, device)
            }
            Files::Safetensors { .. } => {
                let name = part.hf_name();
                if let Some(st) = self.shard(&name) {
                    let shape = st.info(&name).map(|(_, s)| s).unwrap_or_default();
                    if shape != want {
                        return Err(self.shape_error(st.path(), &name, &shape, &want));
                    }
                    return st.tensor(&name, dtype, device);
                }
                let values_key = format!("{name}.compressed");
                if let (Part::Linear(..), Some(st)) = (part, self.shard(&values_key)) {
                    let (dense, shape) = self.read_bitmask_weight(&name)?;
                    if shape != want {
                        let key = format!("{name}.shape");
                        let file = self.shard(&key).unwrap_or(st).path();
                        return Err(self.shape_error(file, &key, &shape, &want));
                    }
                    return Tensor::from_f32(dense, shape, dtype, device);
                }
                let file = match &self.files {
                    Files::Safetensors { shards, .. } if shards.len() == 1 => shards[0].path().to_path_buf(),
                    _ => self.path.clone(),
                };
                Err(Error::MissingTensor { path: file, name })
            }
        }
    }

    /// Drops the mapped pages of `part`'s data from resident memory (see
    /// [`SafetensorsFile::release`]); a no-op for GGUF.
    pub fn release(&self, part: &Part) {
        let name = part.hf_name();
        for n in [name.clone(), format!("{name}.compressed"), format!("{name}.bitmask")] {
            if let Some(st) = self.shard(&n) {
                st.release(&n);
            }
        }
    }

    /// Decoder layer `l` on `device` in `dtype`, dense linears; its mapped pages are
    /// released once read.
    pub fn layer(&self, l: usize, dtype: DType, device: &Device) -> Result<DecoderLayer> {
        self.layer_with(l, dtype, device, |w| Ok(Linear::new(w)))
    }

    /// Decoder layer `l` with each linear made by `linear` from its dense weight (one
    /// weight at a time).
    fn layer_with(
        &self,
        l: usize,
        dtype: DType,
        device: &Device,
        linear: impl Fn(Tensor) -> Result<Linear>,
    ) -> Result<DecoderLayer> {
        let get = |part: Part| -> Result<Tensor> {
            let t = self.tensor(&part, dtype, device)?;
            self.release(&part);
            Ok(t)
        };
        let input_norm = get(Part::InputNorm(l))?;
        let lin = |p| get(Part::Linear(l, p)).and_then(&linear);
        let (q, k, v, o) = (lin(Proj::Q)?, lin(Proj::K)?, lin(Proj::V)?, lin(Proj::O)?);
        let (gate, up, down) = (lin(Proj::Gate)?, lin(Proj::Up)?, lin(Proj::Down)?);
        Ok(DecoderLayer { input_norm, post_norm: get(Part::PostNorm(l))?, q, k, v, o, gate, up, down })
    }

    /// The whole model on `device` in `dtype` (F32 or BF16).
    pub fn load(&self, device: &Device, dtype: DType) -> Result<Llama> {
        if !dtype.is_compute_float() {
            return Err(Error::invalid(format!("model dtype must be f32 or bf16, not {dtype}")));
        }
        Llama::from_named(self.config.clone(), |part| {
            let t = self.tensor(part, dtype, device)?;
            self.release(part);
            Ok(t)
        })
    }

    /// The whole model with every decoder linear compressed as it is read
    /// ([`Linear::Sparse`], bitmask of its non-zeros): a pruned model in the memory of its
    /// kept weights, never a dense copy of more than one weight. The embeddings, norms and
    /// head are dense.
    pub fn load_compressed(&self, device: &Device, dtype: DType) -> Result<Llama> {
        use crate::sparse::{SparseFormat, SparseWeight};
        if !dtype.is_compute_float() {
            return Err(Error::invalid(format!("model dtype must be f32 or bf16, not {dtype}")));
        }
        let config = self.config.clone();
        config.validate()?;
        let get = |part: Part| -> Result<Tensor> {
            let t = self.tensor(&part, dtype, device)?;
            self.release(&part);
            Ok(t)
        };
        let embed = get(Part::Embed)?;
        let compress = |w: Tensor| Ok(Linear::Sparse(SparseWeight::from_dense(&w, SparseFormat::Bitmask)?));
        let layers = (0..config.num_hidden_layers)
            .map(|l| self.layer_with(l, dtype, device, compress))
            .collect::<Result<Vec<_>>>()?;
        let norm = get(Part::Norm)?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(get(Part::LmHead)?) };
        Ok(Llama { config, embed, layers, norm, lm_head })
    }

    /// The model's tokenizer (see the module doc), refused when it has more ids (added
    /// tokens included) than the model's embedding has rows: those ids would index past it.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let (tok, origin) = self.read_tokenizer()?;
        let (ids, rows) = (tok.vocab_size(), self.config.vocab_size);
        if ids > rows {
            let embedding = match self.files {
                Files::Gguf(_) => "token_embd.weight",
                Files::Safetensors { .. } => "model.embed_tokens.weight",
            };
            return Err(Error::Tokenizer(format!(
                "{origin} has {ids} tokens (added tokens included), more than the {rows} rows of the model's \
                 embedding ({embedding}; vocab_size {rows} in {}): ids from {rows} on have no embedding, so \
                 this is not the model's tokenizer",
                self.config_origin()
            )));
        }
        Ok(tok)
    }

    /// The tokenizer as stored, and where it was read (for errors).
    fn read_tokenizer(&self) -> Result<(Tokenizer, String)> {
        match &self.files {
            Files::Gguf(g) => {
                Ok((Tokenizer::from_gguf(g)?, format!("the tokenizer.ggml.* metadata of {}", g.path().display())))
            }
            Files::Safetensors { shards, .. } => {
                if let [st] = shards.as_slice() {
                    if let Some(json) = st.metadata().get(META_TOKENIZER) {
                        let origin = format!("{} (metadata {META_TOKENIZER_CONFIG})", st.path().display());
                        let tok = Tokenizer::from_json_parts(
                            json,
                            st.metadata().get(META_TOKENIZER_CONFIG).map(String::as_str),
                            &origin,
                        )?;
                        return Ok((
                            tok,
                            format!("the tokenizer in metadata {META_TOKENIZER} of {}", st.path().display()),
                        ));
                    }
                }
                let dir = self.dir.clone().unwrap_or_default();
                let json_path = dir.join("tokenizer.json");
                if !present(&json_path) {
                    return Err(Error::Tokenizer(format!(
                        "{}: no tokenizer in the metadata and no tokenizer.json in {}",
                        self.path.display(),
                        dir.display()
                    )));
                }
                let config_path = dir.join("tokenizer_config.json");
                let tok = Tokenizer::from_hf_files(&json_path, present(&config_path).then_some(config_path.as_path()))?;
                Ok((tok, json_path.display().to_string()))
            }
        }
    }

    /// The dense values of weight `name` stored as `name.compressed` (kept values, row-major),
    /// `name.bitmask` (U8 [rows, ceil(cols/8)], bit j%8 of byte j/8), `name.shape` and
    /// `name.row_offsets` (U32 [rows], the first value of each row), checked for consistency
    /// (the shape against the config was checked at open, [`Self::check_tensors`]).
    fn read_bitmask_weight(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let values_key = format!("{name}.compressed");
        let Some(st) = self.shard(&values_key) else {
            return Err(Error::MissingTensor { path: self.path.clone(), name: values_key });
        };
        let bad = |msg: String| Error::format(st.path(), "sparse-bitmask", format!("{name}: {msg}"));
        let ints = |suffix: &str| -> Result<Vec<u32>> {
            let key = format!("{name}.{suffix}");
            self.u32s(&key).unwrap_or_else(|| Err(bad(format!("{key} is missing"))))
        };
        let shape: Vec<usize> = ints("shape")?.into_iter().map(|d| d as usize).collect();
        let [rows, cols] = shape[..] else { return Err(bad(format!("shape {shape:?} is not 2-D"))) };
        let offsets = ints("row_offsets")?;
        let values = st.tensor_f32(&values_key)?;
        let mask_key = format!("{name}.bitmask");
        let mask_file = self.shard(&mask_key).ok_or_else(|| bad(format!("{mask_key} is missing")))?;
        if mask_file.info(&mask_key) != Some((DType::U8, vec![rows, crate::sparse::BitMask::stride_for(cols)])) {
            return Err(bad(format!("{mask_key} must be U8 [{rows}, {}]", cols.div_ceil(8))));
        }
        let mask = crate::sparse::BitMask::from_bytes(rows, cols, mask_file.tensor_bytes(&mask_key)?.to_vec())
            .map_err(|e| Error::format(mask_file.path(), "sparse-bitmask", format!("{mask_key}: {e}")))?;
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
