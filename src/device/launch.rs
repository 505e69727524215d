//! Launch geometry of our kernels, as plain numbers: grid and block sizes (x, y, z) and the
//! dynamic shared memory in bytes. Each op's `cuda.rs` computes it in one function that the
//! CUDA launcher converts into cudarc's `LaunchConfig` and the CPU execution of the same
//! kernel (tests/cuda_on_cpu) uses as it is, so both run the same grid.

use cudarc::driver::LaunchConfig;

use crate::{Error, Result};

/// Grid, block and dynamic shared memory of one kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Blocks along x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block along x, y, z.
    pub block: (u32, u32, u32),
    /// Bytes of `extern __shared__` memory per block.
    pub shared_bytes: u32,
}

impl Launch {
    /// 1-D: ⌈n / threads⌉ blocks (at least one) of `threads` threads, no dynamic shared memory.
    pub fn grid_1d(n: usize, threads: u32) -> Result<Launch> {
        let blocks = n.div_ceil(threads as usize);
        let blocks = u32::try_from(blocks).map_err(|_| Error::invalid(format!("{n} elements exceed one CUDA grid")))?;
        Ok(Launch { grid: (blocks.max(1), 1, 1), block: (threads, 1, 1), shared_bytes: 0 })
    }
}

/// Consecutive elements a thread of a `grid_stride8` kernel (cuda/common.cuh) takes per step.
pub const GROUP: usize = 8;

impl Launch {
    /// 1-D for a `grid_stride8` kernel over n elements: a thread per [`GROUP`] of them, at most
    /// `max_threads` threads (longer inputs take more grid-stride steps).
    pub fn grid_groups(n: usize, max_threads: usize, threads: u32) -> Result<Launch> {
        Launch::grid_1d(n.div_ceil(GROUP).min(max_threads), threads)
    }
}

impl From<Launch> for LaunchConfig {
    fn from(l: Launch) -> LaunchConfig {
        LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: l.shared_bytes }
    }
}
