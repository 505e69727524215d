//! Devices: [`Device::Cpu`] and [`Device::Cuda`]. Each device counts the bytes of the
//! buffers it hands out ([`MemoryStats`]), so peak memory can be reported on both.

pub(crate) mod cast;
pub mod cpu;
pub mod cuda;
pub mod launch;
mod memory;
pub mod workspace;

pub use cpu::{CpuBuffer, CpuDevice};
pub use cuda::{CudaBuffer, CudaDevice};
pub use launch::Launch;
pub use memory::{MemTicket, MemoryCounter, MemoryStats};

use crate::Result;

/// Where a tensor lives.
#[derive(Clone, Debug)]
pub enum Device {
    /// Host memory.
    Cpu(CpuDevice),
    /// A CUDA GPU.
    Cuda(CudaDevice),
}

impl Device {
    /// A CPU device with a fresh memory counter.
    pub fn cpu() -> Device {
        Device::Cpu(CpuDevice::new())
    }

    /// CUDA device `ordinal`, or [`crate::Error::NoCuda`] when there is none.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(CudaDevice::new(ordinal)?))
    }

    /// Parses "cpu", "cuda" or "cuda:N".
    pub fn from_name(name: &str) -> Result<Device> {
        match name {
            "cpu" => Ok(Device::cpu()),
            "cuda" | "gpu" => Device::cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Device::cuda(i),
                _ => Err(crate::Error::invalid(format!("unknown device '{other}' (expected cpu, cuda or cuda:N)"))),
            },
        }
    }

    /// True for CUDA.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Same physical device (all CPU devices are the same host).
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu(_), Device::Cpu(_)) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.same(b),
            _ => false,
        }
    }

    /// Live and peak bytes allocated through this device.
    pub fn memory(&self) -> MemoryStats {
        match self {
            Device::Cpu(d) => d.memory(),
            Device::Cuda(d) => d.memory(),
        }
    }

    /// How many masked-weight builds the device's workspace skipped because it still held
    /// them (a backward right after its forward; see [`workspace::Workspace::with_built`]).
    pub fn workspace_reuses(&self) -> usize {
        match self {
            Device::Cpu(d) => d.workspace_reuses(),
            Device::Cuda(d) => d.workspace_reuses(),
        }
    }

    /// Resets the peak counter to the current value.
    pub fn reset_peak_memory(&self) {
        match self {
            Device::Cpu(d) => d.reset_peak_memory(),
            Device::Cuda(d) => d.reset_peak_memory(),
        }
    }

    /// Waits for queued GPU work (no-op on CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu(_) => Ok(()),
            Device::Cuda(d) => d.synchronize(),
        }
    }

    /// "cpu" or "cuda:N (name)".
    pub fn label(&self) -> String {
        match self {
            Device::Cpu(_) => "cpu".to_string(),
            Device::Cuda(d) => format!("cuda:{} ({})", d.ordinal(), d.name()),
        }
    }
}

/// For tests: CUDA device 0 with NaN-poisoned allocations, or `None` after printing
/// `skipped: no CUDA device (...)` so a run without a GPU says what it did not test.
///
/// A library test that calls this has `cuda` in its name: `cuda_tests_on_the_cpu_driver`
/// runs the tests so named on the CPU driver of crates/cuda-cpu. Under libtest's parallel
/// runner (threads named after their tests) a name without it panics here.
#[doc(hidden)]
pub fn cuda_for_tests(test: &str) -> Option<Device> {
    if let Some(thread) = std::thread::current().name() {
        assert!(
            !thread.contains("::") || thread.contains("cuda"),
            "library test {thread} asks for CUDA: its name must contain `cuda` (cuda_tests_on_the_cpu_driver runs those)"
        );
    }
    match CudaDevice::new(0) {
        Ok(d) => {
            d.set_poison_allocations(true);
            Some(Device::Cuda(d))
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e}) in {test}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every library test with `cuda` in its name, again on the CPU driver of crates/cuda-cpu
    /// (a child process whose GPU it is): their launchers, kernels and cuBLAS calls against
    /// the CPU references, on a machine without a GPU too.
    #[test]
    fn cuda_tests_on_the_cpu_driver() {
        let passed =
            cuda_cpu::run_on_cpu_driver(Some("cuda"), "cuda_tests_on_the_cpu_driver").unwrap_or_else(|e| panic!("{e}"));
        assert!(passed >= 30, "only {passed} CUDA tests ran on the CPU driver");
    }

    #[test]
    fn workspace_grows_is_reused_and_counted() {
        let dev = CpuDevice::new();
        let before = dev.memory().current_bytes;
        dev.with_workspace::<f32, _>(100, |w| {
            assert_eq!(w.len(), 100);
            w[0] = 7.0;
            Ok(())
        })
        .unwrap();
        assert_eq!(dev.memory().current_bytes - before, 400);
        dev.with_workspace::<f32, _>(50, |w| {
            assert_eq!((w.len(), w[0]), (50, 7.0), "reused, not reallocated");
            Ok(())
        })
        .unwrap();
        dev.with_workspace::<f32, _>(300, |_| Ok(())).unwrap();
        assert_eq!(dev.memory().current_bytes - before, 1200, "grown: the old buffer was released");
        assert_eq!(dev.workspace_bytes(), 1200);
        let nested = dev.with_workspace::<f32, _>(10, |_| dev.with_workspace::<f32, _>(10, |_| Ok(())));
        assert!(nested.unwrap_err().to_string().contains("in use"));
    }

    #[test]
    fn workspace_build_is_skipped_only_while_intact() {
        let dev = CpuDevice::new();
        let builds = std::cell::Cell::new(0);
        let build = |w: &mut [f32]| {
            builds.set(builds.get() + 1);
            w.fill(builds.get() as f32);
            Ok(())
        };
        let read = |w: &mut [f32]| Ok(w[0]);
        assert_eq!(dev.with_built_workspace::<f32, _>(8, Some(&[1, 2]), build, read).unwrap(), 1.0);
        assert_eq!(
            dev.with_built_workspace::<f32, _>(8, Some(&[1, 2]), build, read).unwrap(),
            1.0,
            "held: not rebuilt"
        );
        assert_eq!((builds.get(), dev.workspace_reuses()), (1, 1));
        assert_eq!(dev.with_built_workspace::<f32, _>(8, Some(&[1, 3]), build, read).unwrap(), 2.0, "another key");
        dev.with_workspace::<f32, _>(8, |_| Ok(())).unwrap();
        assert_eq!(
            dev.with_built_workspace::<f32, _>(8, Some(&[1, 3]), build, read).unwrap(),
            3.0,
            "forgotten after a use"
        );
        assert_eq!(
            dev.with_built_workspace::<f32, _>(64, Some(&[1, 3]), build, read).unwrap(),
            4.0,
            "forgotten when regrown"
        );
        let failed = dev.with_built_workspace::<f32, _>(64, Some(&[9]), |_| Err(crate::Error::invalid("x")), read);
        assert!(failed.is_err());
        assert_eq!(
            dev.with_built_workspace::<f32, _>(64, Some(&[1, 3]), build, read).unwrap(),
            5.0,
            "a failed build holds nothing"
        );
        assert_eq!((builds.get(), dev.workspace_reuses()), (5, 1));
    }

    #[test]
    fn missing_cuda_is_an_error_not_a_panic() {
        match Device::cuda(0) {
            Ok(d) => assert!(d.is_cuda()),
            Err(e) => assert!(matches!(e, crate::Error::NoCuda(_)), "unexpected error kind: {e}"),
        }
        assert!(Device::from_name("tpu").is_err());
        assert!(Device::from_name("cuda:x").is_err());
        assert!(!Device::from_name("cpu").unwrap().is_cuda());
    }
}
