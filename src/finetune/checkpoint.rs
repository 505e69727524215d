//! Training checkpoints: one safetensors file holding the trained tensors
//! (`param/<name>`), the optimizer state (`optim/<name>.{master,exp_avg,exp_avg_sq}`) and
//! whatever else a method needs to rebuild its model (`extra/<name>`, e.g. a mask that
//! changes during training), with the progress (step, data position, history, config,
//! method state) as JSON in the metadata and an FNV-1a 64 checksum over all of it.
//!
//! Writes are atomic (temporary file, fsync, rename): a run killed at any moment leaves
//! the previous checkpoint or the new one, never a mixture. Loading refuses a truncated
//! file (the safetensors header no longer matches the file) and a corrupted one (the
//! checksum differs) with an error naming the file.
//!
//! Format version 2 records what the training was made from ([`Provenance`]: a content
//! hash of the base model as loaded, the data files' hashes, the arguments that change the
//! result), and carries a write id (`sparsetune.write`, written by
//! [`role::CHECKPOINT`]) so that a checkpoint
//! directory is recognised as ours. Version 1 files still load, with no provenance:
//! [`Checkpoint::check_provenance`] refuses them, since nothing says what they were made
//! from.

use std::path::{Path, PathBuf};

use super::trainer::{StepRecord, TrainConfig, Trainer};
use crate::io::outputs::{new_write_id, role, write_stamp, Provenance, CHECKPOINT_FILE};
use crate::io::{write_owned, OwnedEntry, SafetensorsFile};
use crate::model::llama::{Llama, Proj};
use crate::sparse::BitMask;
use crate::{DType, Device, Error, Result, Tensor};

const META: &str = "sparsetune.checkpoint";
const CHECKSUM: &str = "sparsetune.checksum";
const VERSION: u32 = 2;
/// The oldest version this build reads (version 1: no provenance).
const OLDEST_VERSION: u32 = 1;

/// The progress a checkpoint records.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    /// Format version.
    pub version: u32,
    /// Method name (a checkpoint only resumes the method that wrote it).
    pub method: String,
    /// Steps completed.
    pub step: usize,
    /// Windows consumed.
    pub samples_seen: u64,
    /// Optimizer updates applied (steps minus skipped ones).
    pub optimizer_step: u64,
    /// The training configuration (must match on resume).
    pub config: TrainConfig,
    /// Every step's record so far.
    pub history: Vec<StepRecord>,
    /// Method-specific state (stage, rank allocation, ...).
    pub method_state: serde_json::Value,
    /// What the training was made from (None: version 1, or saved without one).
    #[serde(default)]
    pub provenance: Option<Provenance>,
}

/// Every compressed linear's mask (a masked-LoRA base's or a trained sparse weight's) as
/// U8 [out, ceil(in/8)] bitmask bytes named `<module>.mask`, for checkpoints of methods
/// whose masks change during training (SEFT, LoSA).
pub fn masks(model: &Llama) -> Result<Vec<(String, Tensor)>> {
    let cpu = Device::cpu();
    let mut v = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        for p in Proj::ALL {
            if let Some(w) = layer.linear(p).compressed() {
                let m = w.mask()?;
                let t = Tensor::from_vec(m.bytes().to_vec(), [m.rows(), BitMask::stride_for(m.cols())], &cpu)?;
                v.push((format!("{}.mask", super::module_name(l, p)), t));
            }
        }
    }
    Ok(v)
}

/// The mask [`masks`] saved for linear `p` of layer `l` ([rows, cols]), read through `get`
/// (e.g. [`Checkpoint::extra`]).
pub fn read_mask(
    get: &mut impl FnMut(&str) -> Result<Tensor>,
    l: usize,
    p: Proj,
    rows: usize,
    cols: usize,
) -> Result<BitMask> {
    let bytes = get(&format!("{}.mask", super::module_name(l, p)))?.to_vec::<u8>()?;
    BitMask::from_bytes(rows, cols, bytes)
}

/// The conventional checkpoint path inside a checkpoint directory.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// FNV-1a 64.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Checksum of the metadata JSON and every (name, dtype, shape, bytes), in name order.
fn checksum<'a>(meta: &str, tensors: impl Iterator<Item = (&'a str, DType, &'a [usize], &'a [u8])>) -> String {
    let mut h = Fnv::new();
    h.write(meta.as_bytes());
    let mut all: Vec<_> = tensors.collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, data) in all {
        h.write(name.as_bytes());
        h.write(dtype.to_string().as_bytes());
        for d in shape {
            h.write(&(*d as u64).to_le_bytes());
        }
        h.write(data);
    }
    format!("{:016x}", h.0)
}

/// Writes `trainer`'s state (and `extra` tensors of the method), with what it was made from
/// (`provenance`), to `path` atomically.
pub fn save(
    path: &Path,
    trainer: &Trainer,
    method: &str,
    provenance: Option<&Provenance>,
    method_state: serde_json::Value,
    extra: &[(String, Tensor)],
) -> Result<()> {
    let meta = CheckpointMeta {
        version: VERSION,
        method: method.to_string(),
        step: trainer.step,
        samples_seen: trainer.samples_seen,
        optimizer_step: trainer.optimizer.step,
        config: trainer.config.clone(),
        history: trainer.history.clone(),
        method_state,
        provenance: provenance.cloned(),
    };
    let meta_json = serde_json::to_string(&meta).map_err(|e| Error::invalid(format!("checkpoint metadata: {e}")))?;
    let mut blobs = Vec::new();
    for (n, t) in &trainer.params {
        blobs.push(OwnedEntry::of(format!("param/{n}"), t)?);
    }
    for (n, t) in trainer.optimizer.named_state() {
        blobs.push(OwnedEntry::of(format!("optim/{n}"), t)?);
    }
    for (n, t) in extra {
        blobs.push(OwnedEntry::of(format!("extra/{n}"), t)?);
    }
    let sum =
        checksum(&meta_json, blobs.iter().map(|b| (b.name.as_str(), b.dtype, b.shape.as_slice(), b.data.as_slice())));
    let mut md = write_stamp(&new_write_id(), role::CHECKPOINT);
    md.insert(META.to_string(), meta_json);
    md.insert(CHECKSUM.to_string(), sum);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_owned(path, &blobs, &md)
}

/// Recomputes and rewrites (atomically) the checksum of a checkpoint whose metadata or
/// tensors were edited by hand, or crafted by a test: the checksum guards against damage,
/// not against someone who means it, so everything behind it is checked as well.
pub fn reseal(path: &Path) -> Result<()> {
    let file = SafetensorsFile::open(path)?;
    let meta_json =
        file.metadata().get(META).ok_or_else(|| Error::format(path, "checkpoint", "no training state"))?.clone();
    let mut blobs = Vec::new();
    for n in file.names() {
        let (dtype, shape) = file
            .info(n)
            .ok_or_else(|| Error::format(path, "checkpoint", format!("tensor {n} has an unknown dtype")))?;
        blobs.push(OwnedEntry { name: n.to_string(), dtype, shape, data: file.tensor_bytes(n)?.to_vec() });
    }
    let sum =
        checksum(&meta_json, blobs.iter().map(|b| (b.name.as_str(), b.dtype, b.shape.as_slice(), b.data.as_slice())));
    let mut md = file.metadata().clone();
    md.insert(CHECKSUM.to_string(), sum);
    drop(file);
    write_owned(path, &blobs, &md)
}

/// An opened, verified checkpoint.
pub struct Checkpoint {
    file: SafetensorsFile,
    /// Its progress record.
    pub meta: CheckpointMeta,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checkpoint({}, step {})", self.file.path().display(), self.meta.step)
    }
}

/// Opens `path` and verifies it (see the module docs).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let file = SafetensorsFile::open(path)?;
    let corrupt = |msg: String| Error::format(path, "checkpoint", msg);
    let meta_json = file.metadata().get(META).ok_or_else(|| corrupt("no training state in the metadata".into()))?;
    let want = file.metadata().get(CHECKSUM).ok_or_else(|| corrupt("no checksum in the metadata".into()))?;
    let names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    let mut parts = Vec::with_capacity(names.len());
    for n in &names {
        let (dtype, shape) = file.info(n).ok_or_else(|| corrupt(format!("tensor {n} has an unknown dtype")))?;
        parts.push((n.as_str(), dtype, shape, file.tensor_bytes(n)?));
    }
    let got = checksum(meta_json, parts.iter().map(|(n, d, s, b)| (*n, *d, s.as_slice(), *b)));
    if &got != want {
        return Err(corrupt(format!("checksum {got} differs from the recorded {want}: the file is corrupted")));
    }
    let meta: CheckpointMeta =
        serde_json::from_str(meta_json).map_err(|e| corrupt(format!("training state unreadable: {e}")))?;
    if !(OLDEST_VERSION..=VERSION).contains(&meta.version) {
        return Err(corrupt(format!(
            "format version {} (this build reads {OLDEST_VERSION} to {VERSION})",
            meta.version
        )));
    }
    drop(parts);
    Ok(Checkpoint { file, meta })
}

impl Checkpoint {
    /// A stored tensor (`param/...`, `optim/...` or `extra/...`) on `device`, in its own dtype.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (dtype, shape) = self
            .file
            .info(name)
            .ok_or_else(|| Error::MissingTensor { path: self.file.path().to_path_buf(), name: name.to_string() })?;
        Tensor::from_le_bytes(self.file.tensor_bytes(name)?, dtype, shape, device)
    }

    /// An `extra/<name>` tensor.
    pub fn extra(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.tensor(&format!("extra/{name}"), device)
    }

    /// Refuses, naming what differs, a checkpoint not made from `now` (the base model
    /// called `model` and the data called `data` in the message, e.g. "--model" and
    /// "--data"), or one that does not say what it was made from.
    pub fn check_provenance(&self, now: &Provenance, model: &str, data: &str) -> Result<()> {
        let path = self.file.path().display();
        let Some(saved) = &self.meta.provenance else {
            return Err(Error::invalid(format!(
                "cannot resume from {path}: it does not record what it was made from (format version {}, or \
                 written without it), so it cannot be checked against {model} and {data}; start again without \
                 --resume",
                self.meta.version
            )));
        };
        let diff = saved.differences(now, model, data);
        if diff.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "cannot resume from {path}: it was made from other inputs:\n  {}\nresume with the same inputs, or \
             start again without --resume",
            diff.join("\n  ")
        )))
    }

    /// Puts the saved state into `trainer`, which must have been built for the same method,
    /// configuration and trained tensors: parameter values, optimizer state, step, data
    /// position and history.
    pub fn restore(&self, trainer: &mut Trainer, method: &str) -> Result<()> {
        let path = self.file.path();
        let refuse = |msg: String| Err(Error::invalid(format!("cannot resume from {}: {msg}", path.display())));
        if self.meta.method != method {
            return refuse(format!("it was written by method '{}', not '{method}'", self.meta.method));
        }
        if self.meta.config != trainer.config {
            return refuse(format!(
                "the training configuration differs\n  saved: {:?}\n  now:   {:?}",
                self.meta.config, trainer.config
            ));
        }
        let device = trainer.model.device().clone();
        for (n, p) in &trainer.params {
            let t = self.tensor(&format!("param/{n}"), &device)?;
            if t.dims() != p.dims() || t.dtype() != p.dtype() {
                return refuse(format!(
                    "{n} is {} {}, the model has {} {}",
                    t.dtype(),
                    t.shape(),
                    p.dtype(),
                    p.shape()
                ));
            }
            p.copy_from(&t)?;
        }
        trainer.optimizer.restore(self.meta.optimizer_step, |n| self.tensor(&format!("optim/{n}"), &device))?;
        trainer.step = self.meta.step;
        trainer.samples_seen = self.meta.samples_seen;
        trainer.history = self.meta.history.clone();
        Ok(())
    }
}
