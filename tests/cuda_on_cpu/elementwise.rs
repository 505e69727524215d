//! `cuda/elementwise.cu` on the CPU: add, mul, scale, add_assign in f32 and bf16 against
//! `ops::elementwise` on the CPU, tolerance 1e-6 + 1e-6·|ref| (as its cuda_matches_cpu).

use cuda_cpu::Guard;
use sparsetune::device::cuda::CudaFloat;
use sparsetune::device::launch::GROUP;
use sparsetune::ops::elementwise::{self, add_assign, add_forward, mul_forward, scale_forward};
use sparsetune::testing::{assert_close, random_f32};

use crate::{buffer, nan_buffer, run, tensor, widen, GUARDS};

const TOL: (f64, f64) = (1e-6, 1e-6);

/// n: one element, a partial block, the op test's sizes, one full block and one more.
const SIZES: [usize; 6] = [1, 31, 256, 257, 1000, 100_003];

/// Runs all four kernels over n elements and compares them with the CPU reference.
fn check<T: CudaFloat>(n: usize, guard: Guard) {
    let what = format!("elementwise {} n={n} {guard:?}", T::DTYPE);
    let (a, b) = (tensor::<T>(random_f32(n, 2.0, 1), &[n]), tensor::<T>(random_f32(n, 2.0, 2), &[n]));
    let (a_buf, b_buf) = (buffer::<T>(&a, guard), buffer::<T>(&b, guard));
    let launch = elementwise::cuda::geometry(n).unwrap();
    let compare = |kernel: &str, got: Vec<f32>, want: sparsetune::Tensor| {
        assert_close(&format!("{what} {kernel}"), &got, &want.to_f32_vec().unwrap(), TOL.0, TOL.1)
    };
    for (kernel, want) in [("add", add_forward(&a, &b).unwrap()), ("mul", mul_forward(&a, &b).unwrap())] {
        let out = nan_buffer::<T>(n, guard);
        run("elementwise", &format!("{kernel}_{}", T::SUFFIX), launch, &[&a_buf, &b_buf, &out, &n]);
        compare(kernel, widen(&out), want);
    }
    let (s, out) = (-0.37f32, nan_buffer::<T>(n, guard));
    run("elementwise", &format!("scale_{}", T::SUFFIX), launch, &[&a_buf, &s, &out, &n]);
    compare("scale", widen(&out), scale_forward(&a, s).unwrap());
    run("elementwise", &format!("add_assign_{}", T::SUFFIX), launch, &[&a_buf, &b_buf, &n]);
    add_assign(&a, &b).unwrap();
    compare("add_assign", widen(&a_buf), a);
}

f32_and_bf16_tests!(1, SIZES);

/// One element more than the largest grid covers (a group of 8 per thread): the last one is
/// reached by the grid-stride step.
#[test]
fn one_more_than_a_full_grid_stride() {
    let n = GROUP * elementwise::cuda::MAX_GRID_THREADS + 1;
    for guard in GUARDS {
        check::<f32>(n, guard);
    }
    check::<half::bf16>(n, Guard::After);
}
