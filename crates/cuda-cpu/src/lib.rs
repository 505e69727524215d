//! Runs the kernels of the workspace's `cuda/*.cu` on the CPU, from their own source (a test
//! harness: see `include/cuda_cpu.h` for what is modelled and `runtime/launch.cpp` for how).
//!
//! ```ignore
//! let x = Buffer::from_slice(&[1f32, 2.0], Guard::After);
//! let y = Buffer::<f32>::filled(2, f32::NAN, Guard::After);
//! launch("elementwise", "scale_f32", [1, 1, 1], [256, 1, 1], 0, &[&x, &3f32, &y, &2usize])?;
//! assert_eq!(y.to_vec(), [3.0, 6.0]);
//! ```
//! Buffers are mmap'd between two `PROT_NONE` pages, so a kernel that reads or writes past
//! either end faults; the launcher then names the kernel and the offset and aborts.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::marker::PhantomData;

extern "C" {
    fn cuda_cpu_launch(
        module: *const c_char,
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
        args: *const *const c_void,
        params: *const Param,
        nargs: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn cuda_cpu_alloc(bytes: usize, align: usize, at_start: c_int) -> *mut c_void;
    fn cuda_cpu_free(data: *mut c_void);
    fn cuda_cpu_module_total() -> usize;
    fn cuda_cpu_module_name(m: usize) -> *const c_char;
    fn cuda_cpu_module_kernels(m: usize) -> usize;
    fn cuda_cpu_kernel_name(m: usize, k: usize) -> *const c_char;
    fn cuda_cpu_kernel_executions(m: usize, k: usize) -> u64;
}

/// Which end of a [`Buffer`] touches its guard page exactly (the other end has slack up to
/// a page): run a case with both to catch overruns and underruns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// The buffer ends where the guard page after it starts (aligned to its element).
    After,
    /// The buffer starts where the guard page before it ends.
    Before,
}

/// A host buffer a kernel may read and write, like a device allocation: every launch that
/// gets it as an argument may change its contents.
pub struct Buffer<T> {
    data: *mut T,
    len: usize,
    _owns: PhantomData<T>,
}

impl<T: bytemuck::Pod> Buffer<T> {
    /// A copy of `values`.
    pub fn from_slice(values: &[T], guard: Guard) -> Self {
        let b = Self::uninit(values.len(), guard);
        // SAFETY: `data` holds `len` elements, freshly mapped, disjoint from `values`.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), b.data, values.len()) };
        b
    }

    /// `len` copies of `value` (e.g. NaN, to see which outputs a kernel leaves unwritten).
    pub fn filled(len: usize, value: T, guard: Guard) -> Self {
        Self::from_slice(&vec![value; len], guard)
    }

    fn uninit(len: usize, guard: Guard) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        // SAFETY: plain allocation call; the result is checked below.
        let data = unsafe { cuda_cpu_alloc(bytes, std::mem::align_of::<T>(), (guard == Guard::Before) as c_int) };
        assert!(!data.is_null(), "cuda_cpu: cannot map a guarded buffer of {bytes} bytes");
        Buffer { data: data.cast(), len, _owns: PhantomData }
    }

    /// The buffer's address, as a kernel finds it in a table of device addresses (the
    /// multi-tensor kernels).
    pub fn address(&self) -> u64 {
        self.data as u64
    }

    /// The current contents.
    pub fn to_vec(&self) -> Vec<T> {
        // SAFETY: `data` holds `len` initialised elements (Pod: any bits are valid), and no
        // launch runs while `self` is borrowed here.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }.to_vec()
    }
}

impl<T> Drop for Buffer<T> {
    fn drop(&mut self) {
        // SAFETY: `data` came from cuda_cpu_alloc and is freed once.
        unsafe { cuda_cpu_free(self.data.cast()) }
    }
}

/// What a kernel parameter or argument is, as runtime/table.h describes it: its size, its
/// kind (`i` signed or `u` unsigned integer, `f` floating point, `p` pointer) and for a
/// pointer the size of its elements (0: any).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Param {
    bytes: usize,
    kind: c_char,
    pointee_bytes: usize,
}

impl Param {
    fn of<T>(kind: u8, pointee_bytes: usize) -> Self {
        Param { bytes: std::mem::size_of::<T>(), kind: kind as c_char, pointee_bytes }
    }
}

/// A kernel argument: where its value is and what it is (a buffer passes its address, a
/// scalar itself), as `cudaLaunchKernel` takes them; the launcher refuses one that does not
/// match the kernel's parameter.
pub trait Arg {
    /// Pointer to the value, and its description.
    fn value(&self) -> (*const c_void, Param);
}

impl<T> Arg for Buffer<T> {
    fn value(&self) -> (*const c_void, Param) {
        ((&self.data as *const *mut T).cast(), Param::of::<*mut T>(b'p', std::mem::size_of::<T>()))
    }
}

/// A null pointer argument (for kernels that skip an optional output).
pub struct Null;

static NULL_POINTER: usize = 0;

impl Arg for Null {
    fn value(&self) -> (*const c_void, Param) {
        ((&NULL_POINTER as *const usize).cast(), Param::of::<usize>(b'p', 0))
    }
}

macro_rules! scalar_args {
    ($kind:literal: $($t:ty),*) => {$(
        impl Arg for $t {
            fn value(&self) -> (*const c_void, Param) {
                ((self as *const $t).cast(), Param::of::<$t>($kind, 0))
            }
        }
    )*};
}
scalar_args!(b'i': i32, i64);
scalar_args!(b'u': u32, u64, usize);
scalar_args!(b'f': f32, f64);

/// Runs kernel `kernel` of `cuda/<module>.cu` over `grid` blocks of `block` threads, with
/// `shared_bytes` of dynamic shared memory. Err when CUDA would refuse the launch or the
/// arguments do not match the kernel's parameters (count, sizes, kinds, element sizes).
pub fn launch(
    module: &str,
    kernel: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    args: &[&dyn Arg],
) -> Result<(), String> {
    let (pointers, params): (Vec<*const c_void>, Vec<Param>) = args.iter().map(|a| a.value()).unzip();
    let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
    let (module_c, kernel_c) = (c(module)?, c(kernel)?);
    let mut err = [0 as c_char; 512];
    // SAFETY: every pointer in `pointers` points at a live value described by `params`; the
    // launcher checks them against the kernel before running it, and buffers stay
    // alive (borrowed in `args`) until it returns.
    let rc = unsafe {
        cuda_cpu_launch(
            module_c.as_ptr(),
            kernel_c.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            shared_bytes,
            pointers.as_ptr(),
            params.as_ptr(),
            args.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the launcher wrote a NUL-terminated message into `err`.
    Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
}

/// One kernel of the name table.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `cuda/<module>.cu`.
    pub module: String,
    /// Its `extern "C"` name after macro expansion (`rms_norm_fwd_f32`).
    pub name: String,
    /// Launches of it in this process so far.
    pub executions: u64,
}

/// Every kernel of every `cuda/*.cu`, in file order.
pub fn kernels() -> Vec<Kernel> {
    let text = |p: *const c_char| {
        // SAFETY: the table holds static NUL-terminated strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    let mut all = Vec::new();
    // SAFETY (all calls below): indices stay below the counts the table reports.
    for m in 0..unsafe { cuda_cpu_module_total() } {
        let module = text(unsafe { cuda_cpu_module_name(m) });
        for k in 0..unsafe { cuda_cpu_module_kernels(m) } {
            all.push(Kernel {
                module: module.clone(),
                name: text(unsafe { cuda_cpu_kernel_name(m, k) }),
                executions: unsafe { cuda_cpu_kernel_executions(m, k) },
            });
        }
    }
    all
}

/// The folder of `libcuda_cpu.so` and its links `libcuda.so` and `libcublas.so`: the CUDA
/// driver and cuBLAS calls of a GPU program, answered on the CPU (`runtime/driver.cpp`),
/// every kernel of `cuda/*.cu` run by this crate's launcher. A process started with this
/// folder first in `LD_LIBRARY_PATH` sees one GPU, "cuda-cpu"; see [`run_on_cpu_driver`].
pub const DRIVER_DIR: &str = env!("CUDA_CPU_DRIVER_DIR");

/// Runs the tests of the current test executable whose names contain `filter` (all without
/// one), except `skip` (the caller), again in a child process whose GPU is [`DRIVER_DIR`]'s,
/// so that tests written for a GPU run their launchers, kernels and cuBLAS calls on the CPU.
/// Returns how many passed; Err with the child's output when one fails, when one skipped for
/// want of a GPU, or when none ran.
pub fn run_on_cpu_driver(filter: Option<&str>, skip: &str) -> Result<usize, String> {
    let library = std::path::Path::new(DRIVER_DIR).join("libcuda_cpu.so");
    if !library.is_file() {
        return Err(format!("the CPU driver {} is not on this machine (built elsewhere?)", library.display()));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test executable: {e}"))?;
    let mut path = std::ffi::OsString::from(DRIVER_DIR);
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let out = std::process::Command::new(&exe)
        .args(filter)
        .args(["--skip", skip, "--nocapture"])
        .env("LD_LIBRARY_PATH", path)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("tests on the CPU driver failed ({}):\n{text}", out.status));
    }
    let passed = text
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. ")?.split(' ').next()?.parse::<usize>().ok())
        .unwrap_or(0);
    if passed == 0 || text.contains("skipped: no CUDA") {
        return Err(format!("tests did not run on the CPU driver:\n{text}"));
    }
    print!("{text}");
    Ok(passed)
}
