//! `cuda/adamw.cu` on the CPU: three AdamW updates of n values (param [n] f32 or bf16, f32
//! master, m, v, grad [n]) by `adamw_f32`, `adamw_bf16` (param = master rounded, written
//! only) and `adamw_f32_inplace` (an f32 param that is its own master), then Σ param² by
//! `sum_squares_*`, against `ops::adamw::cpu::{adamw, sum_squares}` with the tolerances of
//! its cuda_matches_cpu (master 1e-6 + 1e-5·|ref|, m and v 1e-7 + 1e-5·|ref|, Σ x²
//! relative 1e-5; param in its dtype's tolerance).

use cuda_cpu::{Arg, Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::adamw::cuda::{step_geometry, sum_squares_geometry, MAX_STEP_THREADS, MAX_SUM_THREADS};
use sparsetune::ops::adamw::{cpu, Hyper};
use sparsetune::testing::{assert_close, random_f32};

use crate::{buffer, each_case, nan_buffer, run, tensor, tolerance, widen};

/// n: one value, a partial block, one full 256-thread block and one more, the op test's
/// size, a larger one.
const SIZES: [usize; 6] = [1, 31, 256, 257, 5003, 100_003];

/// Whether the parameter has an f32 master copy (`adamw_<T>`) or is its own (f32 only:
/// `adamw_f32_inplace`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Master {
    Separate,
    Itself,
}

/// `steps` updates the way `adamw::cuda::adamw` launches them, each compared with the CPU
/// reference, then `sum_squares_*` of the parameter.
fn check<T: CudaFloat>(n: usize, master: Master, steps: u64, guard: Guard) {
    let what = format!("adamw {} {master:?} n={n} {guard:?}", T::DTYPE);
    let param_t = tensor::<T>(random_f32(n, 1.0, 1), &[n]);
    let mut master_ref = param_t.to_f32_vec().unwrap();
    let (mut m_ref, mut v_ref) = (vec![0f32; n], vec![0f32; n]);
    let (m, v) = (Buffer::filled(n, 0f32, guard), Buffer::filled(n, 0f32, guard));
    let (param, master_buf) = match master {
        // The parameter is only written: NaN shows an element the kernel skipped.
        Master::Separate => (nan_buffer::<T>(n, guard), Some(Buffer::from_slice(&master_ref, guard))),
        Master::Itself => (buffer::<T>(&param_t, guard), None),
    };
    let kernel = match master {
        Master::Separate => format!("adamw_{}", T::SUFFIX),
        Master::Itself => "adamw_f32_inplace".to_string(),
    };
    for step in 1..=steps {
        let grad = random_f32(n, 0.1, 10 + step);
        let grad_buf = Buffer::from_slice(&grad, guard);
        let h = Hyper { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step, grad_scale: 0.5 };
        let (bc1, sqrt_bc2) = h.bias_corrections();
        let hyper = [h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, bc1, sqrt_bc2, h.grad_scale];
        let mut args: Vec<&dyn Arg> = vec![&param];
        args.extend(master_buf.iter().map(|b| b as &dyn Arg));
        args.extend([&m as &dyn Arg, &v, &grad_buf, &n]);
        args.extend(hyper.iter().map(|x| x as &dyn Arg));
        run("adamw", &kernel, step_geometry(n).unwrap(), &args);
        cpu::adamw(&mut master_ref, &mut m_ref, &mut v_ref, &grad, &h);

        let what = format!("{what} step {step}");
        let master_got = master_buf.as_ref().map_or_else(|| widen(&param), |b| b.to_vec());
        assert_close(&format!("{what} master"), &master_got, &master_ref, 1e-6, 1e-5);
        assert_close(&format!("{what} m"), &m.to_vec(), &m_ref, 1e-7, 1e-5);
        assert_close(&format!("{what} v"), &v.to_vec(), &v_ref, 1e-7, 1e-5);
        let (atol, rtol) = tolerance::<T>();
        let param_ref = tensor::<T>(master_ref.clone(), &[n]).to_f32_vec().unwrap();
        assert_close(&format!("{what} param"), &widen(&param), &param_ref, atol, rtol);
    }
    // Σ param² into a zeroed f64, as the launcher allocates it.
    let (sum, values) = (Buffer::filled(1, 0f64, guard), widen(&param));
    run("adamw", &format!("sum_squares_{}", T::SUFFIX), sum_squares_geometry(n).unwrap(), &[&param, &n, &sum]);
    let (got, want) = (sum.to_vec()[0], cpu::sum_squares(&values));
    let rel = (got - want).abs() / want;
    assert!(rel < 1e-5, "{what} sum of squares: got {got} want {want} (rel {rel:e}, rtol 1e-5)");
}

/// The smallest case, for the kernel count.
pub fn smoke() {
    check::<f32>(1, Master::Separate, 1, Guard::After);
    check::<f32>(1, Master::Itself, 1, Guard::After);
    check::<half::bf16>(1, Master::Separate, 1, Guard::After);
}

#[test]
fn f32_with_master_matches_cpu() {
    each_case(&SIZES, |n, guard| check::<f32>(n, Master::Separate, 3, guard));
}

#[test]
fn f32_in_place_matches_cpu() {
    each_case(&SIZES, |n, guard| check::<f32>(n, Master::Itself, 3, guard));
}

#[test]
fn bf16_matches_cpu() {
    each_case(&SIZES, |n, guard| check::<half::bf16>(n, Master::Separate, 3, guard));
}

/// One value more than the largest grid of each kernel covers: the last one is reached by
/// the grid-stride step (2²⁴ + 1 = 16·2²⁰ + 1 for `sum_squares_f32` after the update; a
/// sum over 2²⁰ threads takes seconds here, so just this one).
#[test]
fn one_more_than_a_full_grid_stride() {
    const { assert!(MAX_STEP_THREADS.is_multiple_of(MAX_SUM_THREADS)) };
    check::<f32>(MAX_STEP_THREADS + 1, Master::Itself, 1, Guard::After);
}
