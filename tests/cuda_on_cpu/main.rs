//! Every kernel of the converted `cuda/*.cu` files, executed on the CPU from its own source
//! (crates/cuda-cpu) with the launch geometry of its CUDA launcher, against its op's CPU
//! reference: the cases and tolerances of the op's `cuda_matches_cpu` test, plus edge sizes
//! per launch; outputs start as NaN, and each case runs with its buffers against the guard
//! page after them and again against the guard page before them.
//!
//! One module per op. Adding an op `<op>` (every `cuda/*.cu` is already compiled and in the
//! name table; a missing intrinsic goes into crates/cuda-cpu/include/cuda_cpu.h):
//!   1. in `src/ops/<op>/cuda.rs`, compute each launch's grid, block and shared bytes in a
//!      `pub fn …geometry(sizes) -> Result<Launch>` that the launcher turns into its
//!      `LaunchConfig` (`LaunchConfig::from(geometry)`);
//!   2. write `tests/cuda_on_cpu/<op>.rs`: a `check::<T>(shape, guard)` that launches every
//!      kernel through [`run`] with that geometry and the launcher's argument order, and
//!      compares with the op's CPU reference (the cases and tolerances of its
//!      `cuda_matches_cpu`, plus edge sizes of each launch); `smoke()` with the smallest
//!      case; tests looping over the shapes, dtypes and [`GUARDS`];
//!   3. add `mod <op>;` and `("<op>", <op>::smoke)` to [`CONVERTED`].

/// For an op whose `check::<T>(case, guard)` runs every kernel of its file on one case (or
/// of one of its formats, so that `[a, b, …]` smoke cases together run them all):
/// `smoke()` (the `$smoke` case(s) in f32 and bf16, for the kernel count) and one test per
/// dtype over every case of `$cases` with both guard placements.
macro_rules! f32_and_bf16_tests {
    ([$($smoke:expr),+], $cases:expr) => {
        /// The smallest case(s), for the kernel count.
        pub fn smoke() {
            $(
                check::<f32>($smoke, cuda_cpu::Guard::After);
                check::<half::bf16>($smoke, cuda_cpu::Guard::After);
            )+
        }

        #[test]
        fn f32_matches_cpu() {
            crate::each_case(&$cases, check::<f32>);
        }

        #[test]
        fn bf16_matches_cpu() {
            crate::each_case(&$cases, check::<half::bf16>);
        }
    };
    ($smoke:expr, $cases:expr) => {
        f32_and_bf16_tests!([$smoke], $cases);
    };
}

mod adamw;
mod attention;
mod cast;
mod cholesky;
mod cross_entropy;
mod elementwise;
mod embedding;
mod infer_linear;
mod kv_cache;
mod masked_lora;
mod nm_pack;
mod prune_select;
mod prune_stats;
mod rms_norm;
mod rope;
mod sparse;
mod sparsegpt;
mod swiglu;

use cuda_cpu::{Arg, Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::device::Launch;
use sparsetune::{DType, Device, Tensor};

/// Both placements of every buffer of a case.
pub const GUARDS: [Guard; 2] = [Guard::After, Guard::Before];

/// Every `cuda/*.cu` file, each with a run of all of its kernels (its smallest cases). A
/// new file must be added here (the count test fails without it).
const CONVERTED: &[(&str, fn())] = &[
    ("elementwise", elementwise::smoke),
    ("rms_norm", rms_norm::smoke),
    ("rope", rope::smoke),
    ("swiglu", swiglu::smoke),
    ("cast", cast::smoke),
    ("embedding", embedding::smoke),
    ("adamw", adamw::smoke),
    ("cross_entropy", cross_entropy::smoke),
    ("prune_stats", prune_stats::smoke),
    ("nm_pack", nm_pack::smoke),
    ("sparse", sparse::smoke),
    ("cholesky", cholesky::smoke),
    ("sparsegpt", sparsegpt::smoke),
    ("prune_select", prune_select::smoke),
    ("attention", attention::smoke),
    ("kv_cache", kv_cache::smoke),
    ("infer_linear", infer_linear::smoke),
    ("masked_lora", masked_lora::smoke),
];

/// Counts kernels: M is the number of `extern "C" __global__` kernels in `cuda/*.cu` after
/// macro expansion (the name table of crates/cuda-cpu: each instantiation counts, so
/// `rms_norm_fwd_f32` and `rms_norm_fwd_bf16` are two), N those executed at least once in
/// this test process. Prints `cuda kernels executed on the CPU: N of M`; fails unless N = M
/// (a kernel or a `.cu` file added without a CPU run).
#[test]
fn every_kernel_runs_on_the_cpu() {
    for (_, run_all) in CONVERTED {
        run_all();
    }
    let kernels = cuda_cpu::kernels();
    for (module, _) in CONVERTED {
        assert!(kernels.iter().any(|k| k.module == *module), "no kernel of cuda/{module}.cu in the name table");
    }
    let executed = kernels.iter().filter(|k| k.executions > 0).count();
    println!("cuda kernels executed on the CPU: {executed} of {}", kernels.len());
    let missing: Vec<String> =
        kernels.iter().filter(|k| k.executions == 0).map(|k| format!("{}/{}", k.module, k.name)).collect();
    assert!(
        missing.is_empty(),
        "kernels never executed on the CPU (a file missing from CONVERTED, or a kernel its smoke run skips): {missing:?}"
    );
}

/// Runs `kernel` of `cuda/<module>.cu` with `launch` (the geometry its CUDA launcher uses).
pub fn run(module: &str, kernel: &str, launch: Launch, args: &[&dyn Arg]) {
    let (g, b) = (launch.grid, launch.block);
    cuda_cpu::launch(module, kernel, [g.0, g.1, g.2], [b.0, b.1, b.2], launch.shared_bytes, args)
        .unwrap_or_else(|e| panic!("{module}/{kernel}: {e}"));
}

/// A CPU tensor of `T`'s dtype from f32 values (rounded as the dtype rounds).
pub fn tensor<T: CudaFloat>(values: Vec<f32>, dims: &[usize]) -> Tensor {
    Tensor::from_f32(values, dims.to_vec(), T::DTYPE, &Device::cpu()).expect("a CPU tensor")
}

/// A tensor's elements as a guarded buffer.
pub fn buffer<T: CudaFloat>(t: &Tensor, guard: Guard) -> Buffer<T> {
    Buffer::from_slice(&bytemuck::pod_collect_to_vec::<u8, T>(&t.to_le_bytes().expect("tensor bytes")), guard)
}

/// A guarded buffer of NaN, so unwritten outputs fail the comparison.
pub fn nan_buffer<T: CudaFloat>(len: usize, guard: Guard) -> Buffer<T> {
    Buffer::filled(len, T::from_f32(f32::NAN), guard)
}

/// Runs `check` on every case with both guard placements.
pub fn each_case<C: Copy>(cases: &[C], check: impl Fn(C, Guard)) {
    for &case in cases {
        for guard in GUARDS {
            check(case, guard);
        }
    }
}

/// Sizes as the kernels' `int` parameters (the launchers check that they fit).
pub fn i32s<const N: usize>(sizes: [usize; N]) -> [i32; N] {
    sizes.map(|v| i32::try_from(v).expect("a size that fits an int"))
}

/// The tolerance (atol, rtol) of the ops' cuda_matches_cpu tests for `T`.
pub fn tolerance<T: CudaFloat>() -> (f64, f64) {
    if T::DTYPE == DType::F32 {
        (1e-5, 1e-4)
    } else {
        (1e-2, 1e-2)
    }
}

/// A buffer's elements widened to f32.
pub fn widen<T: CudaFloat>(b: &Buffer<T>) -> Vec<f32> {
    b.to_vec().into_iter().map(T::to_f32).collect()
}
