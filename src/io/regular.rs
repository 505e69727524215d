//! Opening files that come from outside as regular files only.
//!
//! `File::open` on a FIFO blocks until a writer appears (forever, for a stray named pipe
//! left in a model directory), opening a device can have side effects, and a directory
//! opens fine on Linux only to fail later with an obscure error (`mmap`: "No such device").
//! [`open_regular`] checks the type of what `path` names before opening it (following
//! symbolic links: a link to a regular file is fine), opens it without blocking, and checks
//! again on the open handle (`fstat`), so a file swapped in between is caught too; anything
//! but a regular file is refused by name ("… is a FIFO (named pipe), not a regular file").
//! [`read_regular`] and [`read_regular_to_string`] also bound the size read, for JSON side
//! files whose whole contents are parsed in memory.

use std::fs::{File, FileType};
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Size bound for small JSON side files read whole: `config.json`,
/// `tokenizer_config.json`, `generation_config.json`, `model.safetensors.index.json`.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Size bound for a `tokenizer.json` (the largest real ones are a few tens of MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// `O_NONBLOCK` where its value is known without the `libc` crate: opening a FIFO that a
/// check raced with then returns at once instead of waiting for a writer (the `fstat`
/// after opening refuses it). On a regular file the flag changes nothing. Elsewhere 0:
/// the checks before and after opening remain.
#[cfg(unix)]
const O_NONBLOCK: i32 = if cfg!(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)) {
    0x0004
} else if cfg!(all(
    any(target_os = "linux", target_os = "android"),
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )
)) {
    0o4000
} else {
    0
};

/// What a file type is, in words, when it is not a regular file (`None` when it is).
fn not_regular_kind(ft: &FileType) -> Option<&'static str> {
    if ft.is_file() {
        return None;
    }
    if ft.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if ft.is_socket() {
            return Some("a socket");
        }
        if ft.is_block_device() {
            return Some("a block device");
        }
        if ft.is_char_device() {
            return Some("a character device");
        }
    }
    if ft.is_symlink() {
        return Some("a symbolic link");
    }
    Some("a special file")
}

/// The error for `path` being `kind`: `<path>: is <kind>, not a regular file`.
fn not_regular(path: &Path, kind: &str) -> Error {
    Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("is {kind}, not a regular file")))
}

/// Opens `path` for reading if it is a regular file (or a symbolic link to one); anything
/// else — a FIFO, a directory, a socket, a device — is an [`Error::Io`] naming the path and
/// what it is, checked before opening and again on the opened handle. Never blocks on a
/// FIFO (see the module doc).
pub fn open_regular(path: impl AsRef<Path>) -> Result<File> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if let Some(kind) = not_regular_kind(&meta.file_type()) {
        return Err(not_regular(path, kind));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if let Some(kind) = not_regular_kind(&meta.file_type()) {
        return Err(not_regular(path, kind));
    }
    Ok(file)
}

/// `bytes` in words: "64 MiB" when a whole number of MiB, else "N bytes".
fn size_words(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// The whole of the regular file `path` (see [`open_regular`]), refused with an error
/// naming the path and the limit when it holds more than `max_bytes` (checked on its size
/// before reading, and on what is read, should it grow meanwhile).
pub fn read_regular(path: impl AsRef<Path>, max_bytes: u64) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let file = open_regular(path)?;
    let too_big = |len: String| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("is {len}, over the {} limit for this file", size_words(max_bytes)),
            ),
        )
    };
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max_bytes {
        return Err(too_big(format!("{len} bytes")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(format!("over {max_bytes} bytes (it grew while being read)")));
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text; invalid UTF-8 is an error naming the path and the byte.
pub fn read_regular_to_string(path: impl AsRef<Path>, max_bytes: u64) -> Result<String> {
    let path = path.as_ref();
    String::from_utf8(read_regular(path, max_bytes)?).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_dir;

    #[test]
    fn regular_files_and_links_to_them_open() {
        let dir = test_dir("regular");
        let file = dir.join("a.json");
        std::fs::write(&file, b"{}").unwrap();
        assert_eq!(read_regular_to_string(&file, 2).unwrap(), "{}");
        #[cfg(unix)]
        {
            let link = dir.join("link.json");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&file, &link).unwrap();
            assert_eq!(read_regular(&link, 16).unwrap(), b"{}");
        }
    }

    #[test]
    fn directories_are_refused_by_name() {
        let dir = test_dir("regular").join("sub.safetensors");
        std::fs::create_dir_all(&dir).unwrap();
        let e = open_regular(&dir).unwrap_err().to_string();
        assert!(e.contains("sub.safetensors") && e.contains("is a directory, not a regular file"), "{e}");
    }

    #[test]
    fn sizes_beyond_the_bound_are_refused_with_the_bound() {
        let file = test_dir("regular").join("big.json");
        std::fs::write(&file, vec![b' '; 3 << 20]).unwrap();
        let e = read_regular(&file, 2 << 20).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("3145728 bytes") && e.contains("2 MiB"), "{e}");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        let e = read_regular_to_string(&file, 16).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("not UTF-8"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let fifo = test_dir("regular").join("pipe.json");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            println!("skipped: mkfifo unavailable");
            return;
        }
        let e = read_regular(&fifo, 16).unwrap_err().to_string();
        assert!(e.contains("pipe.json") && e.contains("is a FIFO (named pipe), not a regular file"), "{e}");
        // The check on the open handle alone (as when the file is swapped after the first
        // check) does not block either.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(&fifo).unwrap();
            assert!(not_regular_kind(&f.metadata().unwrap().file_type()).is_some());
        }
    }
}
