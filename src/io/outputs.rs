//! What a command writes, checked before it does any work ([`OutputPlan`]), and what its
//! outputs record of their inputs ([`Provenance`]).
//!
//! [`OutputPlan::check`] refuses, naming the flag and the path:
//! - an output that is one of the inputs (a model's file, any file of a model directory, a
//!   data file), or a directory output that contains one — even with `--overwrite`;
//! - two outputs at one path, or an output inside another output's directory;
//! - a file output whose directory does not exist, or a directory output below a file;
//! - an existing file or non-empty directory that this output did not write itself, unless
//!   `overwrite`; and even then a directory holding anything that is not part of what the
//!   output consists of (a user's notes beside a model, a subdirectory), so that
//!   `--overwrite` never deletes more than an old model, checkpoint or run.
//!
//! Whether an output is our own earlier one is read from the files, never from a name
//! alone: every safetensors file sparsetune writes carries a write id (`sparsetune.write`)
//! and the output that wrote it (`sparsetune.written_by`, one of [`role`]); the first
//! weights file of a model directory lists the directory's other files with their content
//! hashes (`sparsetune.files`), so another model's `special_tokens_map.json`, or a
//! tokenizer file edited since, makes the directory foreign; a run directory has a manifest
//! ([`RUN_MANIFEST`], [`RunManifest`]) written before anything else, listing the hashes
//! of its report and charts. The temporary files of writes (`<name>.tmp-<pid>`) count as
//! ours.
//!
//! Provenance: a stage output or a checkpoint records a content hash of the model it was
//! made from as computed ([`ModelHasher`]: every tensor in [`Part::all`] order, decoder
//! linears as the dense weights they apply, so a model read dense or compressed hashes
//! alike), the data files' hashes ([`hash_data_files`]) and the arguments that change the
//! result; [`Provenance::differences`] names what differs.
//!
//! [`ContentHash`] is a non-cryptographic 64-bit hash over 8-byte words in four lanes
//! (xor, multiply, xor-shift: several GB/s), to tell weights and files apart, not to
//! resist forgery.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::io::regular::{open_regular, read_regular_to_string, MAX_CONFIG_BYTES};
use crate::io::SafetensorsFile;
use crate::model::llama::hf_dir::is_model_file;
use crate::model::llama::source::{INDEX_FILE, META_WRITE};
use crate::model::llama::{Llama, Part};
use crate::storage::Element;
use crate::{DType, Error, Result, Tensor};

/// Metadata key naming the output that wrote a file (one of [`role`]).
pub const META_WRITTEN_BY: &str = "sparsetune.written_by";
/// Metadata key (first weights file of a model directory) listing the directory's other
/// files of the write: a JSON object, file name → [`ContentHash`] hex.
pub const META_FILES: &str = "sparsetune.files";
/// The manifest a `sparsetune run` writes first into its directory.
pub const RUN_MANIFEST: &str = "sparsetune-run.json";
/// The file of a checkpoint directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The files a run writes at the top of its directory besides the manifest.
pub const RUN_FILES: &[&str] = &["report.json", "loss.png", "perplexity.png", "layers.png", "rank.png"];
/// The subdirectories of a run directory: two models and a checkpoint directory.
const RUN_MODELS: &[&str] = &["pruned", "repaired"];
const RUN_CHECKPOINT: &str = "checkpoint";

/// The outputs that write files, as recorded under [`META_WRITTEN_BY`].
pub mod role {
    /// `sparsetune eval --logits-out`.
    pub const LOGITS: &str = "eval --logits-out";
    /// `sparsetune prune --out`.
    pub const PRUNE: &str = "prune --out";
    /// `sparsetune finetune --out`.
    pub const FINETUNE: &str = "finetune --out";
    /// `sparsetune finetune --adapter-out` (and [`crate::finetune::export::save_adapters`]).
    pub const ADAPTERS: &str = "finetune --adapter-out";
    /// A training checkpoint (`finetune --checkpoint-dir`, a run's `checkpoint/`).
    pub const CHECKPOINT: &str = "checkpoint";
    /// `sparsetune run --out-dir` (its manifest and its `pruned/` and `repaired/` models).
    pub const RUN: &str = "run --out-dir";
    /// `sparsetune bench make-model --out`.
    pub const MAKE_MODEL: &str = "bench make-model --out";
}

/// A new write id: the process id and the time in nanoseconds.
pub fn new_write_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// The metadata that marks a file as written by `role` in write `id`.
pub fn write_stamp(id: &str, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(META_WRITE.to_string(), id.to_string()), (META_WRITTEN_BY.to_string(), role.to_string())])
}

const LANE_SEEDS: [u64; 4] =
    [0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344, 0xA409_3822_299F_31D0, 0x082E_FA98_EC4E_6C89];

/// One bijective mixing step: multiply by an odd constant, fold the high half down.
fn mix(x: u64) -> u64 {
    let x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 32)
}

/// A fast non-cryptographic 64-bit content hash (see the module doc): the bytes are read
/// as little-endian 8-byte words, word `i` of each 32-byte block going to lane `i % 4`
/// (`lane = mix(lane ^ word)`); the zero-padded tail, the length and the lanes are folded
/// together at the end. Feeding the same bytes in any pieces gives the same hash.
#[derive(Clone, Debug)]
pub struct ContentHash {
    lanes: [u64; 4],
    pending: [u8; 32],
    npending: usize,
    len: u64,
}

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash { lanes: LANE_SEEDS, pending: [0; 32], npending: 0, len: 0 }
    }
}

impl ContentHash {
    /// An empty hash.
    pub fn new() -> Self {
        Self::default()
    }

    fn block(lanes: &mut [u64; 4], block: &[u8]) {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            *lane = mix(*lane ^ word);
        }
    }

    /// Adds `bytes`.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.npending > 0 {
            let take = (32 - self.npending).min(bytes.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&bytes[..take]);
            self.npending += take;
            bytes = &bytes[take..];
            if self.npending < 32 {
                return;
            }
            let block = self.pending;
            Self::block(&mut self.lanes, &block);
            self.npending = 0;
        }
        let mut blocks = bytes.chunks_exact(32);
        for b in &mut blocks {
            Self::block(&mut self.lanes, b);
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// The hash of everything added so far.
    pub fn finish(&self) -> u64 {
        let mut lanes = self.lanes;
        if self.npending > 0 {
            let mut tail = [0u8; 32];
            tail[..self.npending].copy_from_slice(&self.pending[..self.npending]);
            Self::block(&mut lanes, &tail);
        }
        let mut h = mix(self.len ^ 0x4528_21E6_38D0_1377);
        for lane in lanes {
            h = mix(h ^ lane);
        }
        // splitmix64's finaliser.
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^ (h >> 31)
    }

    /// [`ContentHash::finish`] as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.finish())
    }
}

/// The [`ContentHash`] of `bytes`, as hex.
pub fn hash_bytes(bytes: &[u8]) -> String {
    let mut h = ContentHash::new();
    h.update(bytes);
    h.hex()
}

/// The [`ContentHash`] of a file's bytes, as hex (read in 1 MiB pieces; a regular file
/// only, [`open_regular`]: a FIFO is refused, never waited on).
pub fn hash_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let mut h = ContentHash::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(h.hex());
        }
        h.update(&buf[..n]);
    }
}

/// A content hash of a model's tensors as computed: each tensor's name, dtype, shape and
/// bytes, added in [`Part::all`] order (see [`model_hash`]).
#[derive(Clone, Debug, Default)]
pub struct ModelHasher(ContentHash);

impl ModelHasher {
    /// An empty hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `part`'s tensor (copied to the host one tensor at a time).
    pub fn add(&mut self, part: &Part, t: &Tensor) -> Result<()> {
        fn bytes<T: Element>(h: &mut ContentHash, t: &Tensor) -> Result<()> {
            h.update(bytemuck::cast_slice(&t.to_vec::<T>()?));
            Ok(())
        }
        let h = &mut self.0;
        h.update(part.hf_name().as_bytes());
        h.update(t.dtype().as_str().as_bytes());
        for d in t.dims() {
            h.update(&(*d as u64).to_le_bytes());
        }
        match t.dtype() {
            DType::F32 => bytes::<f32>(h, t),
            DType::BF16 => bytes::<half::bf16>(h, t),
            DType::F16 => bytes::<half::f16>(h, t),
            DType::U32 => bytes::<u32>(h, t),
            DType::U8 => bytes::<u8>(h, t),
        }
    }

    /// The hash, as hex.
    pub fn hex(&self) -> String {
        self.0.hex()
    }
}

/// The [`ModelHasher`] hash of `model`: every tensor in [`Part::all`] order, each decoder
/// linear as the dense weight it applies (a compressed one expanded, one at a time).
pub fn model_hash(model: &Llama) -> Result<String> {
    let mut h = ModelHasher::new();
    h.add(&Part::Embed, &model.embed)?;
    for (l, layer) in model.layers.iter().enumerate() {
        h.add(&Part::InputNorm(l), &layer.input_norm)?;
        for p in crate::model::llama::Proj::ALL {
            let lin = layer.linear(p);
            match lin.dense() {
                Ok(w) => h.add(&Part::Linear(l, p), w)?,
                Err(_) => h.add(&Part::Linear(l, p), &lin.merged()?)?,
            }
        }
        h.add(&Part::PostNorm(l), &layer.post_norm)?;
    }
    h.add(&Part::Norm, &model.norm)?;
    if let Some(head) = &model.lm_head {
        h.add(&Part::LmHead, head)?;
    }
    Ok(h.hex())
}

/// A data file an output was made from: its path as given and its content hash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataFile {
    /// The path as given.
    pub path: String,
    /// [`hash_file`] of its bytes.
    pub hash: String,
}

/// The [`DataFile`] of each of `files`, in order.
pub fn hash_data_files(files: &[PathBuf]) -> Result<Vec<DataFile>> {
    files.iter().map(|p| Ok(DataFile { path: p.display().to_string(), hash: hash_file(p)? })).collect()
}

/// What an output (a pruned model, a checkpoint) was made from.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    /// [`model_hash`] of the model it was made from, as computed.
    pub model: String,
    /// The data files it read, in order (empty when it read none).
    pub data: Vec<DataFile>,
    /// The arguments that change the result, by flag name.
    pub args: BTreeMap<String, Value>,
}

impl Provenance {
    /// Made from the model of hash `model` and `data`, no arguments yet.
    pub fn new(model: String, data: Vec<DataFile>) -> Self {
        Provenance { model, data, args: BTreeMap::new() }
    }

    /// With argument `flag` set to `value`.
    pub fn arg(mut self, flag: &str, value: impl serde::Serialize) -> Self {
        self.args.insert(flag.to_string(), serde_json::to_value(value).unwrap_or(Value::Null));
        self
    }

    /// What differs between this record (`self`, saved) and `now`, one line each, the
    /// model called `model` and the data `data` (e.g. "--model", "--data"); empty when
    /// they agree. Data files are compared by content, in order, not by path.
    pub fn differences(&self, now: &Provenance, model: &str, data: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.model != now.model {
            out.push(format!(
                "{model}: another model (content hash {} then, {} now)",
                short(&self.model),
                short(&now.model)
            ));
        }
        let hashes = |d: &[DataFile]| d.iter().map(|f| f.hash.clone()).collect::<Vec<_>>();
        if hashes(&self.data) != hashes(&now.data) {
            out.push(format!("{data}: other data ({} then; {} now)", files(&self.data), files(&now.data)));
        }
        let keys: std::collections::BTreeSet<&String> = self.args.keys().chain(now.args.keys()).collect();
        for k in keys {
            let (a, b) = (self.args.get(k), now.args.get(k));
            if a != b {
                let show = |v: Option<&Value>| v.map_or("unset".to_string(), Value::to_string);
                out.push(format!("{k}: {} then, {} now", show(a), show(b)));
            }
        }
        out
    }
}

fn short(hash: &str) -> &str {
    if hash.is_empty() {
        "unknown"
    } else {
        hash
    }
}

/// "a.txt (1a2b…), b.txt (3c4d…)", at most three files named.
fn files(d: &[DataFile]) -> String {
    if d.is_empty() {
        return "no files".into();
    }
    let mut s: Vec<String> = d.iter().take(3).map(|f| format!("{} ({})", f.path, f.hash)).collect();
    if d.len() > 3 {
        s.push(format!("and {} more", d.len() - 3));
    }
    s.join(", ")
}

/// What an output path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// One safetensors file (a model, logits, adapters).
    File,
    /// A Hugging Face model directory ([`crate::model::llama::ModelWriter`]).
    ModelDir,
    /// A directory holding a training checkpoint ([`CHECKPOINT_FILE`]).
    CheckpointDir,
    /// A `sparsetune run` directory: [`RUN_MANIFEST`], [`RUN_FILES`], `pruned/`,
    /// `repaired/` and `checkpoint/`.
    RunDir,
}

/// One output of a command.
#[derive(Clone, Debug)]
struct Output {
    flag: String,
    path: PathBuf,
    kind: OutputKind,
    role: &'static str,
}

/// The outputs of a command and the inputs they must not touch, checked before any work
/// (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct OutputPlan {
    /// (flag, path) of each input file or directory.
    inputs: Vec<(String, PathBuf)>,
    outputs: Vec<Output>,
    overwrite: bool,
}

/// An existing output path as found.
enum Found {
    /// Nothing there, or an empty directory.
    Absent,
    /// Our own earlier output.
    Ours,
    /// Something else: why it is not ours, and what in it `--overwrite` may not replace.
    Foreign { why: String, keep: Option<String> },
    /// Not this kind of output at all (a directory where a file goes, or a file where a
    /// directory goes): refused even with `--overwrite`.
    Unusable(String),
}

/// Why an existing directory is not our own earlier output, and what in it is not part of
/// such an output at all; each reason starts with the file's name.
#[derive(Default)]
struct Verdict {
    foreign: Option<String>,
    keep: Option<String>,
}

impl Verdict {
    fn foreign(&mut self, why: String) {
        self.foreign.get_or_insert(why);
    }

    fn keep(&mut self, what: String) {
        self.keep.get_or_insert(what);
    }

    /// Adds the verdict of subdirectory `sub`.
    fn within(&mut self, sub: &str, v: Verdict) {
        if let Some(why) = v.foreign {
            self.foreign(format!("{sub}/{why}"));
        }
        if let Some(what) = v.keep {
            self.keep(format!("{sub}/{what}"));
        }
    }

    fn found(self) -> Found {
        match (self.foreign, self.keep) {
            (None, None) => Found::Ours,
            (Some(why), keep) => Found::Foreign { why, keep },
            (None, Some(keep)) => Found::Foreign { why: format!("it holds {keep}"), keep: Some(keep) },
        }
    }
}

impl OutputPlan {
    /// A plan; `overwrite` lets outputs replace what they did not write (`--overwrite`).
    pub fn new(overwrite: bool) -> Self {
        OutputPlan { overwrite, ..Default::default() }
    }

    /// A model input given by `flag`: its file (and the `config.json`, generation config
    /// and tokenizer files beside it, which may be read with it), or a directory and every
    /// file in it (for an index file, its directory's files).
    pub fn model(mut self, flag: &str, path: &Path) -> Self {
        let is_index = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json"));
        let dir = if path.is_dir() { Some(path.to_path_buf()) } else { path.parent().map(Path::to_path_buf) };
        self.inputs.push((flag.to_string(), path.to_path_buf()));
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()).or_else(|| Some(PathBuf::from("."))) {
            let whole = path.is_dir() || is_index;
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let beside = name == "config.json" || name == "generation_config.json" || name.starts_with("tokenizer");
                if whole || beside {
                    self.inputs.push((flag.to_string(), entry.path()));
                }
            }
        }
        self
    }

    /// Data files given by `flag`.
    pub fn data(mut self, flag: &str, paths: &[PathBuf]) -> Self {
        self.inputs.extend(paths.iter().map(|p| (flag.to_string(), p.clone())));
        self
    }

    /// An output given by `flag` at `path`, of `kind`, written as `role`.
    pub fn output(mut self, flag: &str, path: &Path, kind: OutputKind, role: &'static str) -> Self {
        self.outputs.push(Output { flag: flag.to_string(), path: path.to_path_buf(), kind, role });
        self
    }

    /// Checks every output against the inputs, the other outputs and what is already at
    /// its path (see the module doc). Reads directory listings and file headers, and hashes
    /// the small side files of directories that look like our own.
    pub fn check(&self) -> Result<()> {
        let refuse = |o: &Output, msg: String| Err(Error::invalid(format!("{} {}: {msg}", o.flag, o.path.display())));
        let inputs: Vec<(&str, PathBuf)> =
            self.inputs.iter().filter_map(|(f, p)| Some((f.as_str(), resolve(p).ok()?))).collect();
        let mut resolved: Vec<(&Output, PathBuf)> = Vec::new();
        for o in &self.outputs {
            let at = match resolve(&o.path) {
                Ok(p) => p,
                Err(msg) => return refuse(o, msg),
            };
            for (other, there) in &resolved {
                if *there == at {
                    return refuse(o, format!("{} is the same path: give the two outputs different paths", other.flag));
                }
                let (inner, outer) = if at.starts_with(there) { (o, *other) } else { (*other, o) };
                if (at.starts_with(there) || there.starts_with(&at)) && outer.kind != OutputKind::File {
                    return Err(Error::invalid(format!(
                        "{} {} is inside the directory of {} {}: give the outputs separate paths",
                        inner.flag,
                        inner.path.display(),
                        outer.flag,
                        outer.path.display()
                    )));
                }
            }
            for (flag, input) in &inputs {
                let same = *input == at || same_file(input, &at);
                if same || (o.kind != OutputKind::File && input.starts_with(&at)) {
                    let what = if same { "is" } else { "contains" };
                    return refuse(
                        o,
                        format!(
                            "{what} the input {flag} {}: writing it would destroy the input (--overwrite does not \
                             allow that); give another path",
                            input.display()
                        ),
                    );
                }
            }
            if o.kind == OutputKind::File {
                if let Some(dir) = at.parent().filter(|d| !d.is_dir()) {
                    return refuse(o, format!("its directory {} does not exist: create it first", dir.display()));
                }
            }
            match found(&o.path, o.kind, o.role)? {
                Found::Absent | Found::Ours => {}
                Found::Unusable(msg) => return refuse(o, msg),
                Found::Foreign { keep: None, .. } if self.overwrite => {}
                Found::Foreign { keep: Some(keep), .. } if self.overwrite => {
                    return refuse(
                        o,
                        format!(
                            "it holds {keep}: --overwrite replaces only what such an output consists of, never \
                             other files; move it or give another path"
                        ),
                    )
                }
                Found::Foreign { why, .. } => {
                    return refuse(
                        o,
                        format!(
                            "exists and is not an earlier output of `{}` ({why}): pass --overwrite to replace it",
                            o.role
                        ),
                    )
                }
            }
            resolved.push((o, at));
        }
        Ok(())
    }
}

/// `path` made absolute with every existing ancestor's symlinks resolved and the rest
/// normalised (`..` and `.`); an error when an existing ancestor is not a directory.
fn resolve(path: &Path) -> std::result::Result<PathBuf, String> {
    let abs = std::path::absolute(path).map_err(|e| e.to_string())?;
    let mut base = abs.as_path();
    while std::fs::symlink_metadata(base).is_err() {
        match base.parent() {
            Some(parent) => base = parent,
            None => break,
        }
    }
    let mut out = base.canonicalize().map_err(|e| format!("{}: {e}", base.display()))?;
    let missing = abs.strip_prefix(base).map(Path::to_path_buf).unwrap_or_default();
    if missing.components().next().is_some() && !out.is_dir() {
        return Err(format!("{} is not a directory", out.display()));
    }
    // The missing part has no symlinks: normalise it as text.
    for c in missing.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

/// Whether two existing paths are one file (hard links).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.is_file() && x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// `name` without a write's temporary suffix `.tmp-<pid>`, if it has one.
fn temp_base(name: &str) -> Option<&str> {
    let (base, pid) = name.rsplit_once(".tmp-")?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// Why file `name` (`st`: it opened as a safetensors file) is not `role`'s, or None when
/// its metadata records a write of `role`.
fn not_written_by(st: Option<&SafetensorsFile>, name: &str, role: &str) -> Option<String> {
    let md = st.map(SafetensorsFile::metadata);
    match md.and_then(|md| md.get(META_WRITE).and(md.get(META_WRITTEN_BY))) {
        Some(r) if r == role => None,
        Some(r) => Some(format!("{name} was written by sparsetune as `{r}`")),
        None => Some(format!("{name} was not written by sparsetune")),
    }
}

/// The entries of a directory: (name, is a directory), sorted.
fn entries(dir: &Path) -> Result<Vec<(String, bool)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let is_dir = e.file_type().map_err(|err| Error::io(e.path(), err))?.is_dir();
        v.push((e.file_name().to_string_lossy().into_owned(), is_dir));
    }
    v.sort();
    Ok(v)
}

/// What is at `path` for an output of `kind` written as `role`.
fn found(path: &Path, kind: OutputKind, role: &str) -> Result<Found> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(Found::Absent) };
    if kind == OutputKind::File {
        if meta.is_dir() {
            return Ok(Found::Unusable("is a directory: this output is one file".into()));
        }
        return Ok(match not_written_by(SafetensorsFile::open(path).ok().as_ref(), "the file", role) {
            None => Found::Ours,
            Some(why) => Found::Foreign { why, keep: None },
        });
    }
    if !meta.is_dir() {
        return Ok(Found::Unusable("is a file: this output is a directory".into()));
    }
    if entries(path)?.is_empty() {
        return Ok(Found::Absent);
    }
    Ok(dir_verdict(path, kind, role)?.found())
}

/// The [`Verdict`] on non-empty directory `dir` for an output of `kind`.
fn dir_verdict(dir: &Path, kind: OutputKind, role: &str) -> Result<Verdict> {
    let list = entries(dir)?;
    match kind {
        OutputKind::ModelDir => model_dir(dir, &list, role),
        OutputKind::CheckpointDir => Ok(checkpoint_dir(dir, &list)),
        OutputKind::RunDir => run_dir(dir, &list),
        OutputKind::File => Ok(Verdict { keep: Some("a directory where a file goes".into()), foreign: None }),
    }
}

fn model_dir(dir: &Path, list: &[(String, bool)], role: &str) -> Result<Verdict> {
    let mut v = Verdict::default();
    let mut listed: BTreeMap<String, String> = BTreeMap::new();
    let mut others = Vec::new();
    for (name, is_dir) in list {
        let path = dir.join(name);
        if *is_dir {
            v.keep(format!("{name}/, a directory"));
        } else if !is_model_file(name) {
            v.keep(format!("{name}, which is not part of a model"));
        } else if temp_base(name).is_some() {
        } else if name.ends_with(".safetensors") {
            let st = SafetensorsFile::open(&path).ok();
            match not_written_by(st.as_ref(), name, role) {
                Some(why) => v.foreign(why),
                None => {
                    let files = st.as_ref().and_then(|st| st.metadata().get(META_FILES));
                    if let Some(map) = files.and_then(|s| serde_json::from_str::<BTreeMap<String, String>>(s).ok()) {
                        listed.extend(map);
                    }
                }
            }
        } else if name == INDEX_FILE {
            let by = read_regular_to_string(&path, MAX_CONFIG_BYTES)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|j| j["metadata"][META_WRITTEN_BY].as_str().map(str::to_string));
            match by {
                Some(r) if r == role => {}
                Some(r) => v.foreign(format!("{name} was written by sparsetune as `{r}`")),
                None => v.foreign(format!("{name} was not written by sparsetune")),
            }
        } else {
            others.push(name);
        }
    }
    for name in others {
        if v.foreign.is_some() {
            break;
        }
        match listed.get(name) {
            Some(h) if *h == hash_file(&dir.join(name))? => {}
            Some(_) => v.foreign(format!("{name} was changed since sparsetune wrote it")),
            None => v.foreign(format!("{name} is not a file of sparsetune's earlier write")),
        }
    }
    Ok(v)
}

fn checkpoint_dir(dir: &Path, list: &[(String, bool)]) -> Verdict {
    let mut v = Verdict::default();
    for (name, is_dir) in list {
        if *is_dir || temp_base(name).unwrap_or(name) != CHECKPOINT_FILE {
            v.keep(format!("{name}{}, which is not part of a checkpoint", if *is_dir { "/" } else { "" }));
        } else if temp_base(name).is_none() {
            let st = SafetensorsFile::open(dir.join(name)).ok();
            if let Some(why) = not_written_by(st.as_ref(), name, role::CHECKPOINT) {
                v.foreign(why);
            }
        }
    }
    v
}

/// The manifest of a run directory: its write, and the content hashes accepted for each of
/// its top-level files (two while a file is being replaced: the old and the new).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunManifest {
    /// The write id of the run that wrote it last.
    #[serde(rename = "sparsetune.write")]
    pub write: String,
    /// [`role::RUN`].
    #[serde(rename = "sparsetune.written_by")]
    pub written_by: String,
    /// File name → accepted content hashes.
    pub files: BTreeMap<String, Vec<String>>,
}

impl RunManifest {
    /// The manifest of run directory `dir`, if it has one of ours.
    fn read(dir: &Path) -> Option<RunManifest> {
        let text = read_regular_to_string(dir.join(RUN_MANIFEST), MAX_CONFIG_BYTES).ok()?;
        serde_json::from_str::<RunManifest>(&text).ok().filter(|m| m.written_by == role::RUN && !m.write.is_empty())
    }

    /// Starts a run in `dir` (created if missing): writes a manifest with a new write id,
    /// keeping the entries of the earlier one (ours) for the files still there.
    pub fn start(dir: &Path) -> Result<RunManifest> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = RunManifest::read(dir).map(|m| m.files).unwrap_or_default();
        files.retain(|name, _| dir.join(name).is_file());
        let m = RunManifest { write: new_write_id(), written_by: role::RUN.to_string(), files };
        m.save(dir)?;
        Ok(m)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::invalid(e.to_string()))?;
        crate::io::write_atomic(&dir.join(RUN_MANIFEST), text.as_bytes())
    }

    /// Writes `files` (name, bytes) into `dir` and removes `stale` files of an earlier run,
    /// keeping the manifest true at every moment: the new hashes are listed beside the old
    /// before the files are replaced, the old ones dropped after.
    pub fn write_files(&mut self, dir: &Path, files: &[(&str, Vec<u8>)], stale: &[&str]) -> Result<()> {
        let hashes: Vec<String> = files.iter().map(|(_, b)| hash_bytes(b)).collect();
        for ((name, _), h) in files.iter().zip(&hashes) {
            self.files.entry(name.to_string()).or_default().push(h.clone());
        }
        self.save(dir)?;
        for (name, bytes) in files {
            crate::io::write_atomic(&dir.join(name), bytes)?;
        }
        for ((name, _), h) in files.iter().zip(hashes) {
            self.files.insert(name.to_string(), vec![h]);
        }
        for name in stale {
            let path = dir.join(name);
            if path.is_file() {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
            self.files.remove(*name);
        }
        self.save(dir)
    }
}

fn run_dir(dir: &Path, list: &[(String, bool)]) -> Result<Verdict> {
    let manifest = RunManifest::read(dir);
    let mut v = Verdict::default();
    if manifest.is_none() {
        v.foreign(format!("{RUN_MANIFEST} of sparsetune run is missing"));
    }
    for (name, is_dir) in list {
        let path = dir.join(name);
        let base = temp_base(name).unwrap_or(name);
        if *is_dir && RUN_MODELS.contains(&name.as_str()) {
            if !entries(&path)?.is_empty() {
                v.within(name, dir_verdict(&path, OutputKind::ModelDir, role::RUN)?);
            }
        } else if *is_dir && name == RUN_CHECKPOINT {
            if !entries(&path)?.is_empty() {
                v.within(name, dir_verdict(&path, OutputKind::CheckpointDir, role::CHECKPOINT)?);
            }
        } else if *is_dir || (base != RUN_MANIFEST && !RUN_FILES.contains(&base)) {
            v.keep(format!("{name}{}, which is not part of a run", if *is_dir { "/" } else { "" }));
        } else if base != RUN_MANIFEST && temp_base(name).is_none() {
            match manifest.as_ref().and_then(|m| m.files.get(name)) {
                Some(hs) if hs.contains(&hash_file(&path)?) => {}
                Some(_) => v.foreign(format!("{name} was changed since sparsetune run wrote it")),
                None => v.foreign(format!("{name} is not a file of sparsetune run's earlier write")),
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_the_same_in_any_pieces_and_sees_every_bit() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let whole = hash_bytes(&data);
        for cut in [0, 1, 7, 8, 31, 32, 33, 500, 999, 1000] {
            let mut h = ContentHash::new();
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            assert_eq!(h.hex(), whole, "cut at {cut}");
        }
        let mut seen = std::collections::HashSet::new();
        for bit in (0..data.len() * 8).step_by(37) {
            let mut flipped = data.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(seen.insert(hash_bytes(&flipped)), "bit {bit}");
        }
        assert!(!seen.contains(&whole));
        // Trailing zeros and the length are part of the hash.
        assert_ne!(hash_bytes(&[1, 2, 3]), hash_bytes(&[1, 2, 3, 0]));
        assert_ne!(hash_bytes(&[]), hash_bytes(&[0]));
    }

    #[test]
    fn provenance_names_what_differs() {
        let data = |h: &str| vec![DataFile { path: "a.txt".into(), hash: h.into() }];
        let a = Provenance::new("m1".into(), data("d1")).arg("--method", "wanda").arg("--sparsity", 0.5);
        assert!(a.differences(&a.clone(), "--model", "--data").is_empty());
        let b = Provenance::new("m2".into(), data("d2")).arg("--method", "magnitude").arg("--sparsity", 0.5);
        let d = b.differences(&a, "--model", "--data");
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("--model: another model") && d[1].starts_with("--data: other data"), "{d:?}");
        assert_eq!(d[2], "--method: \"magnitude\" then, \"wanda\" now");
        // The same data under another path is the same data.
        let moved = Provenance { data: vec![DataFile { path: "b.txt".into(), hash: "d1".into() }], ..a.clone() };
        assert!(moved.differences(&a, "--model", "--data").is_empty());
    }

    /// Whatever is hashed or read to recognise an output — a data file given as input, a
    /// side file or index of an existing model directory, a run's manifest — is opened as
    /// a regular file only: a FIFO there is refused (or not ours), never waited on.
    #[cfg(unix)]
    #[test]
    fn fifos_are_refused_not_waited_on() {
        let dir = crate::io::test_dir("outputs-fifo");
        let fifo = |name: &str| {
            let p = dir.join(name);
            let made = std::process::Command::new("mkfifo").arg(&p).status().is_ok_and(|s| s.success());
            made.then_some(p)
        };
        let Some(data) = fifo("data.txt") else { return println!("skipped: mkfifo unavailable") };
        let model = dir.join("model");
        std::fs::create_dir_all(&model).unwrap();
        let (run, index) = (dir.join("run"), model.join(INDEX_FILE));
        std::fs::create_dir_all(&run).unwrap();
        for p in [model.join("config.json"), index.clone(), run.join(RUN_MANIFEST)] {
            assert!(std::process::Command::new("mkfifo").arg(&p).status().unwrap().success());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let hashed = hash_file(&data).unwrap_err().to_string();
            let as_model = OutputPlan::new(false).output("--out", &model, OutputKind::ModelDir, role::PRUNE).check();
            let as_run = OutputPlan::new(false).output("--out-dir", &run, OutputKind::RunDir, role::RUN).check();
            let _ = tx.send((hashed, as_model.map_err(|e| e.to_string()), as_run.map_err(|e| e.to_string())));
        });
        let (hashed, as_model, as_run) =
            rx.recv_timeout(std::time::Duration::from_secs(20)).expect("a FIFO was waited on for 20 s");
        assert!(hashed.contains("FIFO"), "{hashed}");
        assert!(as_model.unwrap_err().contains(INDEX_FILE));
        assert!(as_run.unwrap_err().contains("sparsetune-run.json"));
    }

    #[test]
    fn resolve_normalises_the_missing_part() {
        let dir = crate::io::test_dir("outputs-resolve");
        let real = dir.canonicalize().unwrap();
        assert_eq!(resolve(&dir.join("new/../x.safetensors")).unwrap(), real.join("x.safetensors"));
        std::fs::write(dir.join("file"), b"x").unwrap();
        assert!(resolve(&dir.join("file/below")).unwrap_err().contains("not a directory"));
    }
}
