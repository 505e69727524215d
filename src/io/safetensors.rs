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
//! [`Error::Format`] naming the file. Writing is our own so that it can stream to disk and
//! replace the destination atomically.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
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
    /// section exactly.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
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
    /// dtypes are an error (read them with [`SafetensorsFile::tensor_bytes`]).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        let bytes = self.tensor_bytes(name)?;
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
/// format forbids gaps between tensors, so reordering is how alignment is kept). The file
/// is written to `<path>.tmp-<pid>` in the same directory, fsynced, then renamed over
/// `path`, so readers never see a partial file; the directory is fsynced afterwards on a
/// best-effort basis.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[SafetensorsEntry<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let invalid = |msg: String| Error::invalid(format!("writing {}: {msg}", path.display()));
    let mut seen = HashSet::new();
    for t in tensors {
        if t.name == "__metadata__" {
            return Err(invalid("tensor name '__metadata__' is reserved".into()));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(invalid(format!("tensor '{}' given twice", t.name)));
        }
        let expected = t.shape.iter().try_fold(t.dtype.size_in_bytes(), |a, &d| a.checked_mul(d));
        if expected != Some(t.data.len()) {
            return Err(invalid(format!(
                "tensor '{}' ({}, shape {:?}) needs {} bytes, got {}",
                t.name,
                t.dtype,
                t.shape,
                expected.map_or("an overflowing number of".into(), |n| n.to_string()),
                t.data.len()
            )));
        }
    }
    let mut order: Vec<&SafetensorsEntry<'_>> = tensors.iter().collect();
    order.sort_by_key(|t| std::cmp::Reverse(t.dtype.size_in_bytes()));

    let header =
        header_json(&order, metadata).map_err(|e| Error::format(path, FORMAT, format!("serialising header: {e}")))?;

    let file_name = path.file_name().ok_or_else(|| invalid("path has no file name".into()))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = write_file(&tmp, &header, &order);
    if let Err(e) = written {
        // The partial file is useless; its removal failing changes nothing for the caller.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Persist the rename itself. Some platforms cannot open or sync directories; the data
    // is already safe in the file, so this stays best-effort.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The JSON header, padded with spaces to a multiple of 8 bytes.
fn header_json(order: &[&SafetensorsEntry<'_>], metadata: &BTreeMap<String, String>) -> serde_json::Result<String> {
    let mut fields = Vec::with_capacity(order.len() + 1);
    if !metadata.is_empty() {
        fields.push(format!("\"__metadata__\":{}", serde_json::to_string(metadata)?));
    }
    let mut offset = 0usize;
    for t in order {
        let end = offset + t.data.len();
        fields.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            serde_json::to_string(&t.name)?,
            header_name(t.dtype),
            serde_json::to_string(&t.shape)?,
        ));
        offset = end;
    }
    let mut header = format!("{{{}}}", fields.join(","));
    let padded = header.len().next_multiple_of(8);
    header.extend(std::iter::repeat_n(' ', padded - header.len()));
    Ok(header)
}

fn write_file(tmp: &Path, header: &str, order: &[&SafetensorsEntry<'_>]) -> Result<()> {
    let io = |e| Error::io(tmp, e);
    let mut w = BufWriter::new(File::create(tmp).map_err(io)?);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    for t in order {
        w.write_all(t.data).map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
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
