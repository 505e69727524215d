//! `cuda/swiglu.cu` on the CPU: `swiglu_fwd_*` (h = silu(gate)·up) and `swiglu_bwd_*`
//! (dgate, dup; either alone with the other pointer null), f32 and bf16, all tensors [n],
//! against the CPU reference `ops::swiglu::cpu::forward` and `ops::swiglu::backward` with
//! its cuda_matches_cpu tolerances (f32 1e-5 + 1e-4·|ref|, bf16 1e-2 + 1e-2·|ref|).

use cuda_cpu::{Arg, Guard, Null};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::device::launch::GROUP;
use sparsetune::ops::swiglu::{self, cuda::geometry};
use sparsetune::testing::{assert_close, random_f32};

use crate::{buffer, nan_buffer, run, tensor, tolerance, widen};

/// n: one element, a partial block, one full 256-thread block and one more, the op test's
/// sizes ([3, 33], [37, 577], [5, 7, 4099]).
const SIZES: [usize; 7] = [1, 31, 99, 256, 257, 21_349, 143_465];

/// Runs both kernels the way `swiglu::cuda::{forward, backward}` launch them and compares
/// h, dgate and dup with the CPU reference.
fn check<T: CudaFloat>(n: usize, guard: Guard) {
    let what = format!("swiglu {} n={n} {guard:?}", T::DTYPE);
    let (atol, rtol) = tolerance::<T>();
    let (gate, up, dh) = (
        tensor::<T>(random_f32(n, 8.0, 20), &[n]),
        tensor::<T>(random_f32(n, 1.0, 21), &[n]),
        tensor::<T>(random_f32(n, 1.0, 22), &[n]),
    );
    let (gate_buf, up_buf, dh_buf) = (buffer::<T>(&gate, guard), buffer::<T>(&up, guard), buffer::<T>(&dh, guard));
    let launch = geometry(n).unwrap();
    let compare = |name: &str, got: Vec<f32>, want: Option<sparsetune::Tensor>| {
        assert_close(&format!("{what} {name}"), &got, &want.unwrap().to_f32_vec().unwrap(), atol, rtol)
    };

    let h = nan_buffer::<T>(n, guard);
    run("swiglu", &format!("swiglu_fwd_{}", T::SUFFIX), launch, &[&gate_buf, &up_buf, &h, &n]);
    // h against the reference itself (the op's CPU forward is the fast path, tested
    // against it).
    let mut h_ref = vec![0f32; n];
    swiglu::cpu::forward(&gate.to_f32_vec().unwrap(), &up.to_f32_vec().unwrap(), &mut h_ref);
    assert_close(&format!("{what} h"), &widen(&h), &h_ref, atol, rtol);

    let (dgate_ref, dup_ref) = swiglu::backward(&gate, &up, &dh, true, true).unwrap();
    let backward = |dgate: &dyn Arg, dup: &dyn Arg| {
        run("swiglu", &format!("swiglu_bwd_{}", T::SUFFIX), launch, &[&gate_buf, &up_buf, &dh_buf, dgate, dup, &n])
    };
    let (dgate, dup) = (nan_buffer::<T>(n, guard), nan_buffer::<T>(n, guard));
    backward(&dgate, &dup);
    compare("dgate", widen(&dgate), dgate_ref.clone());
    compare("dup", widen(&dup), dup_ref.clone());
    // One output alone: the kernel skips the null one.
    let dgate = nan_buffer::<T>(n, guard);
    backward(&dgate, &Null);
    compare("dgate alone", widen(&dgate), dgate_ref);
    let dup = nan_buffer::<T>(n, guard);
    backward(&Null, &dup);
    compare("dup alone", widen(&dup), dup_ref);
}

f32_and_bf16_tests!(1, SIZES);

/// One element more than the largest grid covers (a group of 8 per thread): the last one is
/// reached by the grid-stride step (each guard once: 2²¹ fibers per launch take a while).
#[test]
fn one_more_than_a_full_grid_stride() {
    let n = GROUP * swiglu::cuda::MAX_GRID_THREADS + 1;
    check::<f32>(n, Guard::After);
    check::<half::bf16>(n, Guard::Before);
}
