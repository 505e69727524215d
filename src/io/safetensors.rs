//! safetensors read (memory-mapped) and atomic write.
//!
//! File layout:
//! ```text
//! u64 LE header_len | header_len bytes of JSON (space-padded) | data
//! JSON: {"__metadata__": {str: str}?,
//!        "<name>": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
//! ```
//! Offsets are relative to the start of the data section; tensors are row-major and
//! little-endian, and together cover the data section exactly, without gaps or overlaps.
//! Parsing and validation are done by the `safetensors` crate; its errors become
//! [`Error::Format`] naming the file. Only a regular file is opened (see
//! [`super::open_regular`]), and float data is checked for NaN and infinities as it is read
//! ([`SafetensorsFile::tensor`], [`SafetensorsFile::tensor_f32`]): the error names the
//! tensor, the first bad element and its value. Writing is our own so that it can stream to
//! disk and replace the destination atomically.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::{DType, Error, Result};

const FORMAT: &str = "safetensors";
/// Size of the header-length prefix.
const PREFIX_LEN: usize = 8;

/// One tensor's directory entry.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// An open, memory-mapped safetensors file. Tensors are listed in data (file) order.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .field("metadata", &self.metadata)
            .finish()
    }
}

fn to_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F16 => Some(DType::F16),
        Dtype::U32 => Some(DType::U32),
        Dtype::U8 => Some(DType::U8),
        _ => None,
    }
}

/// The dtype's name in the JSON header.
fn header_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::U32 => "U32",
        DType::U8 => "U8",
    }
}

impl SafetensorsFile {
    /// Maps the file and validates its header: JSON well-formed, every dtype known to the
    /// format, byte ranges consistent with shapes, contiguous, and covering the data
    /// section exactly. Anything but a regular file (a FIFO, a directory) is refused by
    /// name.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref().to_path_buf();
        let file = super::open_regular(&path)?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < PREFIX_LEN as u64 {
            return Err(Error::format(
                &path,
                FORMAT,
                format!("file is {len} bytes, shorter than the 8-byte header length"),
            ));
        }
        // SAFETY: the map is read-only and lives as long as `SafetensorsFile`; like every
        // memory-mapped reader we rely on the file not being truncated while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, parsed) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::format(&path, FORMAT, e.to_string()))?;
        // `read_metadata` checked that header and data fit the file exactly.
        let data_start = PREFIX_LEN + header_len;
        let mut entries: Vec<Entry> = parsed
            .tensors()
            .into_iter()
            .map(|(name, info)| Entry {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + info.data_offsets.0,
                end: data_start + info.data_offsets.1,
            })
            .collect();
        entries.sort_by_key(|e| (e.start, e.end));
        let index = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        let metadata = parsed
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(SafetensorsFile { path, mmap, entries, index, metadata })
    }

    /// Path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in file order (by data offset), including tensors whose dtype
    /// [`DType`] cannot represent.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.index
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.to_owned() })
    }

    /// dtype and row-major shape of a tensor; `None` if it is absent or its dtype is not
    /// one of F32, BF16, F16, U32, U8 (see [`SafetensorsFile::dtype_name`] for those).
    pub fn info(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        let e = self.entry(name).ok()?;
        Some((to_dtype(e.dtype)?, e.shape.clone()))
    }

    /// The dtype as written in the header ("F32", "I64", "F8_E4M3", ...), for any tensor.
    pub fn dtype_name(&self, name: &str) -> Option<String> {
        self.entry(name).ok().map(|e| e.dtype.to_string())
    }

    /// The tensor's raw little-endian bytes.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let e = self.entry(name)?;
        self.mmap.get(e.start..e.end).ok_or_else(|| {
            Error::format(
                &self.path,
                FORMAT,
                format!("tensor '{name}': data [{}, {}) outside the file", e.start, e.end),
            )
        })
    }

    /// The tensor as f32, converted exactly from F32, BF16 or F16. Integer and other
    /// dtypes are an error (read them with [`SafetensorsFile::tensor_bytes`]), and so is a
    /// NaN or infinite element (see [`SafetensorsFile::tensor`]).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        let bytes = self.tensor_bytes(name)?;
        self.check_finite(e, bytes)?;
        let halves = || bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        match e.dtype {
            Dtype::F32 => Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            Dtype::BF16 => Ok(halves().map(|b| bf16::from_bits(b).to_f32()).collect()),
            Dtype::F16 => Ok(halves().map(|b| f16::from_bits(b).to_f32()).collect()),
            other => Err(Error::format(
                &self.path,
                FORMAT,
                format!("tensor '{name}' has dtype {other}; only F32, BF16 and F16 convert to f32"),
            )),
        }
    }

    /// The `__metadata__` map (empty if the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Bytes of tensor data in the file (the sum over its tensors).
    pub fn data_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.end - e.start).sum()
    }

    /// Refuses NaN and infinities in float data `bytes` of entry `e` (one pass over the
    /// raw bits, in parallel): the error names the file, the tensor, the first bad
    /// element (flat row-major index and its position) and its value. Other dtypes pass.
    fn check_finite(&self, e: &Entry, bytes: &[u8]) -> Result<()> {
        // An IEEE float is NaN or infinite exactly when its exponent bits are all ones.
        let first = match e.dtype {
            Dtype::F32 => bytes
                .par_chunks_exact(4)
                .position_first(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 == 0x7F80_0000),
            Dtype::BF16 => {
                bytes.par_chunks_exact(2).position_first(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 == 0x7F80)
            }
            Dtype::F16 => {
                bytes.par_chunks_exact(2).position_first(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 == 0x7C00)
            }
            _ => None,
        };
        let Some(i) = first else { return Ok(()) };
        let value = match e.dtype {
            Dtype::F32 => f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]),
            Dtype::BF16 => bf16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32(),
            _ => f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32(),
        };
        Err(Error::format(
            &self.path,
            FORMAT,
            format!(
                "tensor '{}' ({} {:?}): element {i} (at {:?}) is {value}: NaN and infinite weights are refused",
                e.name,
                e.dtype,
                e.shape,
                unravel(i, &e.shape)
            ),
        ))
    }

    /// The float tensor `name` on `device` in `dtype`: read in its stored dtype (F32, BF16
    /// or F16), converted on the host when `dtype` differs (exactly when widening). A NaN
    /// or infinite element is an error naming the tensor, the element and its value.
    pub fn tensor(&self, name: &str, dtype: DType, device: &crate::Device) -> Result<crate::Tensor> {
        let (stored, shape) = self.info(name).ok_or_else(|| match self.dtype_name(name) {
            Some(d) => Error::format(&self.path, FORMAT, format!("tensor '{name}' has dtype {d}, not a float type")),
            None => Error::MissingTensor { path: self.path.clone(), name: name.to_owned() },
        })?;
        if !matches!(stored, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::format(
                &self.path,
                FORMAT,
                format!("tensor '{name}' has dtype {stored}, not a float type"),
            ));
        }
        let bytes = self.tensor_bytes(name)?;
        self.check_finite(self.entry(name)?, bytes)?;
        // On the caller's CPU device (its allocator counts the bytes), or a scratch one.
        let cpu = if device.is_cuda() { crate::Device::cpu() } else { device.clone() };
        let host = crate::Tensor::from_le_bytes(bytes, stored, shape, &cpu)?;
        let host = if stored == dtype { host } else { host.to_dtype(dtype)? };
        if device.is_cuda() {
            host.to_device(device)
        } else {
            Ok(host)
        }
    }

    /// Lets the kernel drop the mapped pages of tensor `name` from this process's resident
    /// memory (they are read again from the file if touched), so that reading a model a
    /// layer at a time keeps its resident size at one layer. A no-op for an absent name.
    pub fn release(&self, name: &str) {
        let Ok(e) = self.entry(name) else { return };
        // SAFETY: the map is a read-only shared mapping of a file; MADV_DONTNEED only drops
        // pages, which the kernel reloads from the unchanged file on the next access, so
        // every slice borrowed from the map keeps reading the same bytes. Failure (e.g. an
        // unsupported platform) only means the pages stay resident.
        let _ =
            unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, e.start, e.end - e.start) };
    }
}

/// The row-major position of flat index `i` in `shape`.
pub(crate) fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut at = vec![0; shape.len()];
    for (a, &d) in at.iter_mut().zip(shape).rev() {
        if d > 0 {
            *a = i % d;
            i /= d;
        }
    }
    at
}

/// One tensor to write: `data` is row-major little-endian, `shape.product() ×
/// dtype.size_in_bytes()` bytes long.
#[derive(Clone, Debug)]
pub struct SafetensorsEntry<'a> {
    /// Tensor name (unique within the file; `__metadata__` is reserved).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Row-major dimensions.
    pub shape: Vec<usize>,
    /// Raw bytes.
    pub data: &'a [u8],
}

/// A tensor to write that owns its bytes (built from a [`crate::Tensor`]).
#[derive(Clone, Debug)]
pub struct OwnedEntry {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Row-major dimensions.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes.
    pub data: Vec<u8>,
}

impl OwnedEntry {
    /// `t` in its own dtype.
    pub fn of(name: impl Into<String>, t: &crate::Tensor) -> Result<Self> {
        Ok(OwnedEntry { name: name.into(), dtype: t.dtype(), shape: t.dims().to_vec(), data: t.to_le_bytes()? })
    }

    /// Float `t` converted to float `dtype`.
    pub fn converted(name: impl Into<String>, t: &crate::Tensor, dtype: DType) -> Result<Self> {
        if t.dtype() == dtype {
            Self::of(name, t)
        } else {
            Self::of(name, &t.to_dtype(dtype)?)
        }
    }

    /// U32 values with a shape.
    pub fn u32s(name: impl Into<String>, shape: Vec<usize>, values: &[u32]) -> Self {
        OwnedEntry { name: name.into(), dtype: DType::U32, shape, data: bytemuck::cast_slice(values).to_vec() }
    }

    /// The borrowed entry [`write_safetensors`] takes.
    pub fn entry(&self) -> SafetensorsEntry<'_> {
        SafetensorsEntry { name: self.name.clone(), dtype: self.dtype, shape: self.shape.clone(), data: &self.data }
    }
}

/// [`write_safetensors`] for owned entries.
pub fn write_owned(path: impl AsRef<Path>, tensors: &[OwnedEntry], metadata: &BTreeMap<String, String>) -> Result<()> {
    let entries: Vec<SafetensorsEntry<'_>> = tensors.iter().map(OwnedEntry::entry).collect();
    write_safetensors(path, &entries, metadata)
}

/// Writes `tensors` and `metadata` (stored as `__metadata__`, omitted when empty) to
/// `path`, readable by Hugging Face's `safetensors`.
///
/// Data is laid out by decreasing element size (F32/U32, then BF16/F16, then U8), in the
/// given order within each size, so every tensor starts aligned to its element size (the
/// format forbids gaps between tensors, so reordering is how alignment is kept). The write
/// is atomic (see [`SafetensorsWriter`]).
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[SafetensorsEntry<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut order: Vec<&SafetensorsEntry<'_>> = tensors.iter().collect();
    order.sort_by_key(|t| std::cmp::Reverse(t.dtype.size_in_bytes()));
    let specs =
        order.iter().map(|t| TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() }).collect();
    let file = PlannedFile { path: path.to_path_buf(), tensors: specs, metadata: metadata.clone(), reserve: 0 };
    let mut w = SafetensorsWriter::create(vec![file])?;
    for t in order {
        w.put(&t.name, t.data)?;
    }
    w.finish(BTreeMap::new())
}

/// A tensor a [`SafetensorsWriter`] will write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Row-major dimensions.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Bytes of data, or an error when the size overflows.
    pub fn byte_len(&self) -> Result<usize> {
        self.shape.iter().try_fold(self.dtype.size_in_bytes(), |a, &d| a.checked_mul(d)).ok_or_else(|| {
            Error::invalid(format!("tensor '{}' ({}, shape {:?}): size overflows", self.name, self.dtype, self.shape))
        })
    }
}

/// One file a [`SafetensorsWriter`] writes: its path, its tensors in data order, its
/// `__metadata__`.
#[derive(Clone, Debug)]
pub struct PlannedFile {
    /// Final path.
    pub path: PathBuf,
    /// Tensors, in the order their data is laid out (and must be given to `put`).
    pub tensors: Vec<TensorSpec>,
    /// The `__metadata__` map (omitted when empty).
    pub metadata: BTreeMap<String, String>,
    /// Bytes of header padding kept free for metadata known only at the end (a report),
    /// written in place by [`SafetensorsWriter::finish`] (first file only).
    pub reserve: usize,
}

/// Writes safetensors files whose tensors are known in advance, streaming each tensor's
/// bytes as it is produced, so a model larger than memory can be written a layer at a
/// time. The header of each file is computed from the plan, the data follow in plan order
/// (`put` refuses anything else). Each file is written to `<path>.tmp-<pid>` and fsynced;
/// [`SafetensorsWriter::finish`] renames them all over their final paths and fsyncs the
/// directories, so a reader never sees a partial file. Dropped unfinished, the writer
/// removes its temporary files.
pub struct SafetensorsWriter {
    files: Vec<PlannedFile>,
    temps: Vec<PathBuf>,
    /// (file, tensor) of the next `put`.
    next: (usize, usize),
    /// Header length of each file once written.
    header_lens: Vec<usize>,
    out: Option<BufWriter<File>>,
    finished: bool,
}

fn temp_path(path: &Path) -> Result<PathBuf> {
    let file_name =
        path.file_name().ok_or_else(|| Error::invalid(format!("{}: path has no file name", path.display())))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

/// Persists a rename: some platforms cannot open or sync directories; the data is already
/// safe in the file, so this stays best-effort.
pub(crate) fn sync_dir_of(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl SafetensorsWriter {
    /// Checks the plan (unique names, `__metadata__` reserved, sizes that fit) and
    /// prepares the files: what killed writes of them left (`<path>.tmp-<dead pid>`) is
    /// removed; nothing is written before the first `put`.
    pub fn create(files: Vec<PlannedFile>) -> Result<SafetensorsWriter> {
        let mut temps = Vec::with_capacity(files.len());
        for f in &files {
            let invalid = |msg: String| Error::invalid(format!("writing {}: {msg}", f.path.display()));
            let mut seen = HashSet::new();
            for t in &f.tensors {
                if t.name == "__metadata__" {
                    return Err(invalid("tensor name '__metadata__' is reserved".into()));
                }
                if !seen.insert(t.name.as_str()) {
                    return Err(invalid(format!("tensor '{}' given twice", t.name)));
                }
                t.byte_len().map_err(|e| invalid(e.to_string()))?;
            }
            temps.push(temp_path(&f.path)?);
        }
        for f in &files {
            super::remove_stale_temps(&f.path);
        }
        let header_lens = vec![0; files.len()];
        Ok(SafetensorsWriter { files, temps, next: (0, 0), header_lens, out: None, finished: false })
    }

    /// Writes the data of the next tensor of the plan, which must be `name`, with exactly
    /// its byte length.
    pub fn put(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let (fi, ti) = self.next;
        let Some(file) = self.files.get(fi) else {
            return Err(Error::invalid(format!("tensor '{name}' given after the last planned one")));
        };
        let spec = &file.tensors[ti];
        if spec.name != name {
            return Err(Error::invalid(format!(
                "writing {}: tensor '{name}' given where the plan has '{}'",
                file.path.display(),
                spec.name
            )));
        }
        if spec.byte_len()? != data.len() {
            return Err(Error::invalid(format!(
                "writing {}: tensor '{name}' ({}, shape {:?}) needs {} bytes, got {}",
                file.path.display(),
                spec.dtype,
                spec.shape,
                spec.byte_len()?,
                data.len()
            )));
        }
        let tmp = &self.temps[fi];
        let io = |e| Error::io(tmp, e);
        if ti == 0 {
            let header = header_json(&file.tensors, &file.metadata, file.reserve)?;
            self.header_lens[fi] = header.len();
            let mut w = BufWriter::with_capacity(1 << 20, File::create(tmp).map_err(io)?);
            w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
            w.write_all(header.as_bytes()).map_err(io)?;
            self.out = Some(w);
        }
        let w = self.out.as_mut().ok_or_else(|| Error::invalid("safetensors writer: no open file"))?;
        w.write_all(data).map_err(io)?;
        self.next = if ti + 1 == file.tensors.len() {
            let w = self.out.take().ok_or_else(|| Error::invalid("safetensors writer: no open file"))?;
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)?;
            (fi + 1, 0)
        } else {
            (fi, ti + 1)
        };
        Ok(())
    }

    /// The next tensor `put` expects, if any.
    pub fn next_name(&self) -> Option<&str> {
        self.files.get(self.next.0).map(|f| f.tensors[self.next.1].name.as_str())
    }

    /// After every tensor has been put: adds `late` to the first file's metadata (in the
    /// header space it reserved; an error if it does not fit) and renames the files into
    /// place.
    pub fn finish(mut self, late: BTreeMap<String, String>) -> Result<()> {
        if let Some(name) = self.next_name() {
            return Err(Error::invalid(format!("safetensors writer finished before tensor '{name}'")));
        }
        if !late.is_empty() {
            let (f, tmp) = (&self.files[0], &self.temps[0]);
            let mut metadata = f.metadata.clone();
            metadata.extend(late);
            let mut header = header_json(&f.tensors, &metadata, 0)?;
            let len = self.header_lens[0];
            if header.len() > len {
                return Err(Error::invalid(format!(
                    "writing {}: the metadata needs a {}-byte header, {len} were reserved",
                    f.path.display(),
                    header.len()
                )));
            }
            header.extend(std::iter::repeat_n(' ', len - header.len()));
            use std::io::{Seek, SeekFrom};
            let io = |e| Error::io(tmp, e);
            let mut file = std::fs::OpenOptions::new().write(true).open(tmp).map_err(io)?;
            file.seek(SeekFrom::Start(PREFIX_LEN as u64)).map_err(io)?;
            file.write_all(header.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        // Files with no tensors were never opened: write their header now.
        for (f, tmp) in self.files.iter().zip(&self.temps) {
            if f.tensors.is_empty() {
                let header = header_json(&[], &f.metadata, 0)?;
                let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
                bytes.extend_from_slice(header.as_bytes());
                let mut file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
                file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(|e| Error::io(tmp, e))?;
            }
        }
        for (f, tmp) in self.files.iter().zip(&self.temps) {
            std::fs::rename(tmp, &f.path).map_err(|e| Error::io(&f.path, e))?;
            sync_dir_of(&f.path);
        }
        for f in &self.files {
            super::remove_stale_temps(&f.path);
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for SafetensorsWriter {
    fn drop(&mut self) {
        if !self.finished {
            // The partial files are useless; failing to remove them changes nothing.
            for tmp in &self.temps {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// The JSON header, padded with spaces to a multiple of 8 bytes, `reserve` more first.
fn header_json(order: &[TensorSpec], metadata: &BTreeMap<String, String>, reserve: usize) -> Result<String> {
    let ser = |e: serde_json::Error| Error::invalid(format!("serialising a safetensors header: {e}"));
    let mut fields = Vec::with_capacity(order.len() + 1);
    if !metadata.is_empty() {
        fields.push(format!("\"__metadata__\":{}", serde_json::to_string(metadata).map_err(ser)?));
    }
    let mut offset = 0usize;
    for t in order {
        let end = offset.checked_add(t.byte_len()?).ok_or_else(|| Error::invalid("safetensors file size overflows"))?;
        fields.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            serde_json::to_string(&t.name).map_err(ser)?,
            header_name(t.dtype),
            serde_json::to_string(&t.shape).map_err(ser)?,
        ));
        offset = end;
    }
    let mut header = format!("{{{}}}", fields.join(","));
    let padded = (header.len() + reserve).next_multiple_of(8);
    header.extend(std::iter::repeat_n(' ', padded - header.len()));
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_dir;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A small file with F32, BF16, U8 and U32 tensors and metadata.
    fn sample(path: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let w = f32_bytes(&[1.0, -2.5, f32::MIN_POSITIVE, 3.0e38, -0.0, 7.0]);
        let b: Vec<u8> =
            [1.0f32, -0.5, 1.0e30].iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect();
        let m = vec![0b1010_0101u8, 0xFF, 0];
        let ids: Vec<u8> = [0u32, 49151, u32::MAX].iter().flat_map(|x| x.to_le_bytes()).collect();
        let tensors = [
            SafetensorsEntry { name: "mask".into(), dtype: DType::U8, shape: vec![3], data: &m },
            SafetensorsEntry { name: "w".into(), dtype: DType::F32, shape: vec![2, 3], data: &w },
            SafetensorsEntry { name: "b".into(), dtype: DType::BF16, shape: vec![3], data: &b },
            SafetensorsEntry { name: "ids".into(), dtype: DType::U32, shape: vec![3], data: &ids },
        ];
        let metadata = BTreeMap::from([
            ("format".to_string(), "pt".to_string()),
            ("note".to_string(), "quote \" and ünïcode".to_string()),
        ]);
        write_safetensors(path, &tensors, &metadata).unwrap();
        (w, b, m, ids)
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let dir = test_dir("safetensors");
        let path = dir.join("round_trip.safetensors");
        let (w, b, m, ids) = sample(&path);
        let f = SafetensorsFile::open(&path).unwrap();
        // Data order: 4-byte types first (given order), then BF16, then U8.
        assert_eq!(f.names(), ["w", "ids", "b", "mask"]);
        assert_eq!(f.info("w"), Some((DType::F32, vec![2, 3])));
        assert_eq!(f.info("b"), Some((DType::BF16, vec![3])));
        assert_eq!(f.info("mask"), Some((DType::U8, vec![3])));
        assert_eq!(f.info("ids"), Some((DType::U32, vec![3])));
        assert_eq!(f.info("nope"), None);
        assert_eq!(f.tensor_bytes("w").unwrap(), w.as_slice());
        assert_eq!(f.tensor_bytes("b").unwrap(), b.as_slice());
        assert_eq!(f.tensor_bytes("mask").unwrap(), m.as_slice());
        assert_eq!(f.tensor_bytes("ids").unwrap(), ids.as_slice());
        let wf = f.tensor_f32("w").unwrap();
        assert_eq!(f32_bytes(&wf), w);
        assert_eq!(f.tensor_f32("b").unwrap(), [1.0, -0.5, bf16::from_f32(1.0e30).to_f32()]);
        assert!(f.tensor_f32("ids").is_err());
        assert!(matches!(f.tensor_bytes("nope"), Err(Error::MissingTensor { .. })));
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
        assert_eq!(f.metadata().get("note").map(String::as_str), Some("quote \" and ünïcode"));
        // Header length is a multiple of 8; the temporary file is gone.
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(u64::from_le_bytes(raw[..8].try_into().unwrap()) % 8, 0);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn f16_converts_exactly_and_foreign_dtypes_stay_visible() {
        let path = test_dir("safetensors").join("f16.safetensors");
        let h: Vec<u8> =
            [0.5f32, -65504.0, 6.1035156e-5].iter().flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes()).collect();
        write_safetensors(
            &path,
            &[SafetensorsEntry { name: "h".into(), dtype: DType::F16, shape: vec![3], data: &h }],
            &BTreeMap::new(),
        )
        .unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.tensor_f32("h").unwrap(), [0.5, -65504.0, 6.1035156e-5]);
        assert!(f.metadata().is_empty());

        // An I64 tensor written by hand: listed, bytes readable, no f32.
        let header = r#"{"i":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
        let mut raw = (header.len() as u64).to_le_bytes().to_vec();
        raw.extend_from_slice(header.as_bytes());
        raw.extend_from_slice(&[7; 16]);
        let path = test_dir("safetensors").join("i64.safetensors");
        std::fs::write(&path, &raw).unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.names(), ["i"]);
        assert_eq!(f.info("i"), None);
        assert_eq!(f.dtype_name("i").as_deref(), Some("I64"));
        assert_eq!(f.tensor_bytes("i").unwrap(), &[7; 16]);
        let err = f.tensor_f32("i").unwrap_err().to_string();
        assert!(err.contains("I64"), "{err}");
    }

    /// NaN and infinities are refused when read as floats, in each float dtype, naming the
    /// tensor, the element and its value; the raw bytes stay readable.
    #[test]
    fn non_finite_floats_are_refused_by_tensor_and_element() {
        let path = test_dir("safetensors").join("non-finite.safetensors");
        let w = f32_bytes(&[0.0, 1.0, 2.0, f32::NAN, 4.0, 5.0]);
        let b: Vec<u8> =
            [1.0f32, f32::INFINITY].iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect();
        let h: Vec<u8> = [f32::NEG_INFINITY].iter().flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes()).collect();
        let ok = f32_bytes(&[f32::MAX, -f32::MAX, f32::MIN_POSITIVE]);
        let tensors = [
            SafetensorsEntry { name: "w".into(), dtype: DType::F32, shape: vec![2, 3], data: &w },
            SafetensorsEntry { name: "ok".into(), dtype: DType::F32, shape: vec![3], data: &ok },
            SafetensorsEntry { name: "b".into(), dtype: DType::BF16, shape: vec![2], data: &b },
            SafetensorsEntry { name: "h".into(), dtype: DType::F16, shape: vec![1], data: &h },
        ];
        write_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        let cpu = crate::Device::cpu();
        for (name, at, shown) in
            [("w", "element 3 (at [1, 0]) is NaN", "F32"), ("b", "element 1 (at [1]) is inf", "BF16")]
        {
            for e in [
                f.tensor_f32(name).unwrap_err().to_string(),
                f.tensor(name, DType::F32, &cpu).unwrap_err().to_string(),
                f.tensor(name, DType::BF16, &cpu).unwrap_err().to_string(),
            ] {
                assert!(e.contains("non-finite.safetensors") && e.contains(&format!("'{name}'")), "{e}");
                assert!(e.contains(at) && e.contains(shown), "{e}");
            }
        }
        assert!(f.tensor_f32("h").unwrap_err().to_string().contains("element 0 (at [0]) is -inf"));
        assert_eq!(f.tensor_f32("ok").unwrap(), [f32::MAX, -f32::MAX, f32::MIN_POSITIVE]);
        assert_eq!(f.tensor_bytes("w").unwrap(), w.as_slice());
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
        assert_eq!(unravel(7, &[2, 3, 2]), [1, 0, 1]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let dir = test_dir("safetensors");
        let full = dir.join("full.safetensors");
        sample(&full);
        let bytes = std::fs::read(&full).unwrap();
        let cut_path = dir.join("cut.safetensors");
        for cut in 0..bytes.len() {
            std::fs::write(&cut_path, &bytes[..cut]).unwrap();
            match SafetensorsFile::open(&cut_path) {
                Err(Error::Format { path, .. }) => assert_eq!(path, cut_path),
                Err(e) => panic!("cut at {cut}: wrong error kind {e}"),
                Ok(_) => panic!("cut at {cut} of {} opened", bytes.len()),
            }
        }
    }

    /// Writes `u64 header_len | header | data` and returns the error text of opening it.
    fn open_err(name: &str, header_len: u64, header: &str, data: &[u8]) -> String {
        let path = test_dir("safetensors").join(name);
        let mut raw = header_len.to_le_bytes().to_vec();
        raw.extend_from_slice(header.as_bytes());
        raw.extend_from_slice(data);
        std::fs::write(&path, &raw).unwrap();
        match SafetensorsFile::open(&path) {
            Err(e @ Error::Format { .. }) => e.to_string(),
            other => panic!("{name}: expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_headers_are_errors() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let n = ok.len() as u64;
        // Header length beyond the file, and absurd.
        open_err("long.safetensors", n + 100, ok, &[0; 8]);
        open_err("huge.safetensors", u64::MAX, ok, &[0; 8]);
        // Broken JSON.
        let broken = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]"#;
        open_err("json.safetensors", broken.len() as u64, broken, &[0; 8]);
        open_err("notjson.safetensors", 4, "\u{1}\u{2}\u{3}\u{4}", &[]);
        // Unknown dtype.
        let bad = r#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#;
        open_err("dtype.safetensors", bad.len() as u64, bad, &[0; 8]);
        // Offsets out of range.
        let bad = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        open_err("short.safetensors", bad.len() as u64, bad, &[0; 4]);
        let bad = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
        open_err("range.safetensors", bad.len() as u64, bad, &[0; 8]);
        // Overlapping tensors.
        let bad = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                      "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        open_err("overlap.safetensors", bad.len() as u64, bad, &[0; 12]);
        // Shape disagrees with the byte range; shape product overflows.
        let bad = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        open_err("shape.safetensors", bad.len() as u64, bad, &[0; 8]);
        let bad = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        open_err("overflow.safetensors", bad.len() as u64, bad, &[0; 8]);
        // Trailing bytes after the last tensor.
        open_err("trailing.safetensors", n, ok, &[0; 9]);
        // The message names the file.
        let err = open_err("named.safetensors", n + 100, ok, &[0; 8]);
        assert!(err.contains("named.safetensors"), "{err}");
    }

    #[test]
    fn write_checks_its_input() {
        let path = test_dir("safetensors").join("bad_write.safetensors");
        let data = [0u8; 12];
        let entry =
            |name: &str, dtype, shape: Vec<usize>| SafetensorsEntry { name: name.into(), dtype, shape, data: &data };
        let meta = BTreeMap::new();
        // Length mismatch (3 F32 = 12 bytes is right; 2 is not).
        assert!(write_safetensors(&path, &[entry("a", DType::F32, vec![2])], &meta).is_err());
        assert!(write_safetensors(&path, &[entry("a", DType::BF16, vec![usize::MAX, 2])], &meta).is_err());
        // Duplicate and reserved names.
        let dup = [entry("a", DType::F32, vec![3]), entry("a", DType::U8, vec![12])];
        assert!(write_safetensors(&path, &dup, &meta).is_err());
        assert!(write_safetensors(&path, &[entry("__metadata__", DType::U8, vec![12])], &meta).is_err());
        assert!(!path.exists());
        write_safetensors(&path, &[entry("a", DType::F32, vec![3])], &meta).unwrap();
        assert!(path.exists());
    }
}
