//! `cuda/adamw.cu` on the CPU: three AdamW updates of n values (param [n] f32 or bf16, f32
//! master, m, v, grad [n]) by `adamw_f32`, `adamw_bf16` (param = master rounded, written
//! only) and `adamw_f32_inplace` (an f32 param that is its own master), then Σ param² by
//! `sum_squares_*`, against `ops::adamw::cpu::{adamw, sum_squares}` with the tolerances of
//! its cuda_matches_cpu (master 1e-6 + 1e-5·|ref|, m and v 1e-7 + 1e-5·|ref|, Σ x²
//! relative 1e-5; param in its dtype's tolerance).
//!
//! The multi-tensor kernels (`multi_sum_squares`, `multi_adamw_*`) on lists of tensors of
//! awkward lengths (one value, a chunk ± 1, several chunks), their tables made by the
//! launcher's `multi_tables` from the buffers' addresses: three clipped steps of two
//! micro-batches each (clipping active, then none), and a skipped one (a NaN gradient: no
//! buffer changes), against `cpu::clip_scale` and `cpu::adamw` per tensor.

use cuda_cpu::{Arg, Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::adamw::cuda::{
    multi_geometry, multi_tables, step_geometry, sum_squares_geometry, Row, MAX_MULTI_BLOCKS, MAX_STEP_THREADS,
    MAX_SUM_THREADS, MULTI_CHUNK,
};
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

/// One tensor of a multi-tensor case: its buffers and the CPU reference's state.
struct Tensor1<T> {
    param: Buffer<T>,
    master: Option<Buffer<f32>>,
    m: Buffer<f32>,
    v: Buffer<f32>,
    grad: Buffer<f32>,
    master_ref: Vec<f32>,
    m_ref: Vec<f32>,
    v_ref: Vec<f32>,
}

/// Tensors of `lens` values, updated by `multi_sum_squares` then `multi_adamw_*` as
/// `adamw::clipped_step` launches them: steps 1 and 2 clipped to half their norm, step 3
/// unclipped, then a step whose gradient holds a NaN (skipped: nothing may change).
fn check_multi<T: CudaFloat>(lens: &[usize], master: Master, guard: Guard) {
    let what = format!("multi adamw {} {master:?} lens {lens:?} {guard:?}", T::DTYPE);
    let mut tensors: Vec<Tensor1<T>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let p = tensor::<T>(random_f32(n, 1.0, 100 + i as u64), &[n]);
            let master_ref = p.to_f32_vec().unwrap();
            Tensor1 {
                param: buffer::<T>(&p, guard),
                master: (master == Master::Separate).then(|| Buffer::from_slice(&master_ref, guard)),
                m: Buffer::filled(n, 0f32, guard),
                v: Buffer::filled(n, 0f32, guard),
                grad: Buffer::filled(n, 0f32, guard),
                master_ref,
                m_ref: vec![0.0; n],
                v_ref: vec![0.0; n],
            }
        })
        .collect();
    let rows: Vec<Row> = tensors
        .iter()
        .map(|t| Row {
            param: t.param.address(),
            master: t.master.as_ref().map_or(0, Buffer::address),
            m: t.m.address(),
            v: t.v.address(),
            grad: t.grad.address(),
            len: t.m_ref.len(),
        })
        .collect();
    let starts = multi_tables(&rows).1;
    let chunks = *starts.last().unwrap();
    let starts = Buffer::from_slice(&starts, guard);
    let kernel = match master {
        Master::Separate => format!("multi_adamw_{}", T::SUFFIX),
        Master::Itself => "multi_adamw_f32_inplace".to_string(),
    };
    let micro = 2u32;
    for (step, clip, poisoned) in [(1u64, true, false), (2, true, false), (3, false, false), (4, false, true)] {
        let what = format!("{what} step {step}");
        let mut grads: Vec<Vec<f32>> =
            lens.iter().enumerate().map(|(i, &n)| random_f32(n, 0.1, 10 * step + i as u64)).collect();
        if poisoned {
            let last = grads.last_mut().unwrap();
            let at = last.len() / 2;
            last[at] = f32::NAN;
        }
        for (t, g) in tensors.iter_mut().zip(&grads) {
            t.grad = Buffer::from_slice(g, guard);
        }
        // The gradients moved: a fresh table with their addresses.
        let rows: Vec<Row> = rows.iter().zip(&tensors).map(|(r, t)| Row { grad: t.grad.address(), ..*r }).collect();
        let table = Buffer::from_slice(&multi_tables(&rows).0, guard);
        let sumsq = Buffer::filled(1, 0f64, guard);
        let count = tensors.len();
        run("adamw", "multi_sum_squares", multi_geometry(chunks).unwrap(), &[&table, &starts, &count, &sumsq]);
        let want_sq: f64 = grads.iter().map(|g| cpu::sum_squares(g)).sum();
        let max_norm = clip.then(|| (want_sq.sqrt() / f64::from(micro) / 2.0) as f32);
        let got_sq = sumsq.to_vec()[0];
        if poisoned {
            assert!(got_sq.is_nan(), "{what}: sum of squares {got_sq} with a NaN gradient");
        } else {
            let rel = (got_sq - want_sq).abs() / want_sq;
            assert!(rel < 1e-5, "{what} sum of squares: got {got_sq} want {want_sq} (rel {rel:e}, rtol 1e-5)");
        }
        let h = Hyper { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step, grad_scale: 1.0 };
        let (bc1, sqrt_bc2) = h.bias_corrections();
        let (micro_f, max) = (micro as f32, max_norm.unwrap_or(0.0));
        let hyper = [micro_f, max, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, bc1, sqrt_bc2];
        let mut args: Vec<&dyn Arg> = vec![&table, &starts, &count, &sumsq];
        args.extend(hyper.iter().map(|x| x as &dyn Arg));
        run("adamw", &kernel, multi_geometry(chunks).unwrap(), &args);
        // The reference: the factor from the exact sum (the kernel's differs by ~1e-7).
        let (norm, scale) = cpu::clip_scale(want_sq, micro, max_norm);
        assert_eq!(scale.is_none(), poisoned, "{what}: norm {norm}");
        if let Some(grad_scale) = scale {
            let h = Hyper { grad_scale, ..h };
            for (t, g) in tensors.iter_mut().zip(&grads) {
                cpu::adamw(&mut t.master_ref, &mut t.m_ref, &mut t.v_ref, g, &h);
            }
        }
        for (i, t) in tensors.iter().enumerate() {
            let what = format!("{what} tensor {i}");
            let master_got = t.master.as_ref().map_or_else(|| widen(&t.param), |b| b.to_vec());
            assert_close(&format!("{what} master"), &master_got, &t.master_ref, 1e-6, 1e-5);
            assert_close(&format!("{what} m"), &t.m.to_vec(), &t.m_ref, 1e-7, 1e-5);
            assert_close(&format!("{what} v"), &t.v.to_vec(), &t.v_ref, 1e-7, 1e-5);
            let (atol, rtol) = tolerance::<T>();
            let n = t.m_ref.len();
            let param_ref = tensor::<T>(t.master_ref.clone(), &[n]).to_f32_vec().unwrap();
            assert_close(&format!("{what} param"), &widen(&t.param), &param_ref, atol, rtol);
        }
    }
}

/// Lengths of the multi-tensor cases: one value, a chunk less one, a chunk and one more,
/// several chunks and a partial one, a partial block.
const LISTS: [&[usize]; 2] = [&[1, MULTI_CHUNK - 1, MULTI_CHUNK + 1, 3 * MULTI_CHUNK + 5, 31], &[5003]];

/// The smallest case, for the kernel count.
pub fn smoke() {
    check::<f32>(1, Master::Separate, 1, Guard::After);
    check::<f32>(1, Master::Itself, 1, Guard::After);
    check::<half::bf16>(1, Master::Separate, 1, Guard::After);
    check_multi::<f32>(&[1, 2], Master::Separate, Guard::After);
    check_multi::<f32>(&[1, 2], Master::Itself, Guard::After);
    check_multi::<half::bf16>(&[1, 2], Master::Separate, Guard::After);
}

#[test]
fn multi_tensor_f32_with_master_matches_cpu() {
    each_case(&LISTS, |lens, guard| check_multi::<f32>(lens, Master::Separate, guard));
}

#[test]
fn multi_tensor_f32_in_place_matches_cpu() {
    each_case(&LISTS, |lens, guard| check_multi::<f32>(lens, Master::Itself, guard));
}

#[test]
fn multi_tensor_bf16_matches_cpu() {
    each_case(&LISTS, |lens, guard| check_multi::<half::bf16>(lens, Master::Separate, guard));
}

/// One chunk more than the largest multi-tensor grid covers (the last chunk is reached by
/// the block-stride step), split over two tensors.
#[test]
fn multi_tensor_one_more_chunk_than_a_full_grid() {
    let half = MAX_MULTI_BLOCKS / 2 * MULTI_CHUNK;
    check_multi::<f32>(&[half, half + 1], Master::Itself, Guard::After);
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
