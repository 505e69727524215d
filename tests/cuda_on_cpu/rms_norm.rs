//! `cuda/rms_norm.cu` on the CPU: forward (plain, and fused with the residual add), dx (with
//! and without a dx buffer, and with a pending gradient folded in) and the two dw kernels,
//! f32 and bf16, against `ops::rms_norm` on the CPU with its cuda_matches_cpu tolerances
//! (f32 1e-5 + 1e-4·|ref|, bf16 1e-2 + 1e-2·|ref|; dw's atol times rows). The residual sum
//! must match the CPU's rounded sum bit for bit.

use cuda_cpu::{Buffer, Guard, Null};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::rms_norm::{self, cuda::dw_geometry, cuda::row_geometry};
use sparsetune::testing::{assert_close, random_f32};

use crate::{buffer, each_case, nan_buffer, run, tensor, tolerance, widen};

const EPS: f32 = 1e-5;

/// (rows, dim): the op test's shapes; dim 256 and 257 (a row that fills the 256-thread
/// block, and one more, straddling the dw kernels' first block); 64 and 65 rows (one full
/// dw chunk, and a second chunk of one row).
const SHAPES: [(usize, usize); 8] = [(1, 1), (3, 33), (37, 576), (5, 4099), (2, 256), (3, 257), (64, 40), (65, 257)];

/// Runs the four kernels the way `rms_norm::cuda::{forward, backward}` launch them and
/// compares y, dx and dw with the CPU reference.
fn check<T: CudaFloat>(rows: usize, dim: usize, guard: Guard) {
    let what = format!("rms_norm {} {rows}x{dim} {guard:?}", T::DTYPE);
    let (atol, rtol) = tolerance::<T>();
    let x = tensor::<T>(random_f32(rows * dim, 1.0, 10), &[rows, dim]);
    let w = tensor::<T>(random_f32(dim, 1.0, 11), &[dim]);
    let dy = tensor::<T>(random_f32(rows * dim, 1.0, 12), &[rows, dim]);
    let (x_buf, w_buf, dy_buf) = (buffer::<T>(&x, guard), buffer::<T>(&w, guard), buffer::<T>(&dy, guard));
    let (rows_i, dim_i) = (rows as i32, dim as i32);
    let kernel = |name: &str| format!("rms_norm_{name}_{}", T::SUFFIX);

    let y = nan_buffer::<T>(rows * dim, guard);
    let fwd = row_geometry(rows).unwrap();
    run("rms_norm", &kernel("fwd"), fwd, &[&x_buf, &Null, &w_buf, &Null, &y, &rows_i, &dim_i, &EPS]);
    let y_ref = rms_norm::forward(&x, &w, EPS).unwrap().to_f32_vec().unwrap();
    assert_close(&format!("{what} y"), &widen(&y), &y_ref, atol, rtol);
    // Fused with the residual: sum = x + res, y = rms_norm(sum).
    let res = tensor::<T>(random_f32(rows * dim, 1.0, 13), &[rows, dim]);
    let (sum, y) = (nan_buffer::<T>(rows * dim, guard), nan_buffer::<T>(rows * dim, guard));
    run("rms_norm", &kernel("fwd"), fwd, &[&x_buf, &buffer::<T>(&res, guard), &w_buf, &sum, &y, &rows_i, &dim_i, &EPS]);
    let (sum_ref, y_ref) = rms_norm::forward_residual(&x, &res, &w, EPS).unwrap();
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&widen(&sum)), bits(&sum_ref.to_f32_vec().unwrap()), "{what}: residual sum");
    assert_close(&format!("{what} y of x + res"), &widen(&y), &y_ref.to_f32_vec().unwrap(), atol, rtol);

    let (dx_ref, dw_ref) = rms_norm::backward(&x, &w, &dy, EPS, None, true, true).unwrap();
    let (dx, rstd) = (nan_buffer::<T>(rows * dim, guard), Buffer::filled(rows, f32::NAN, guard));
    let dx_args = |pending: &dyn cuda_cpu::Arg, dx: &dyn cuda_cpu::Arg, rstd: &Buffer<f32>| {
        run(
            "rms_norm",
            &kernel("bwd_dx"),
            row_geometry(rows).unwrap(),
            &[&x_buf, &w_buf, &dy_buf, pending, dx, rstd, &rows_i, &dim_i, &EPS],
        )
    };
    dx_args(&Null, &dx, &rstd);
    assert_close(&format!("{what} dx"), &widen(&dx), &dx_ref.unwrap().to_f32_vec().unwrap(), atol, rtol);
    // A pending gradient folded into dx.
    let (dx_pending_ref, _) = rms_norm::backward(&x, &w, &dy, EPS, Some(&res), true, false).unwrap();
    let dx_pending = nan_buffer::<T>(rows * dim, guard);
    dx_args(&buffer::<T>(&res, guard), &dx_pending, &Buffer::filled(rows, f32::NAN, guard));
    let dx_pending_ref = dx_pending_ref.unwrap().to_f32_vec().unwrap();
    assert_close(&format!("{what} dx + pending"), &widen(&dx_pending), &dx_pending_ref, atol, rtol);
    // Without dx (only dw wanted) the kernel writes the same rstd and nothing else.
    let rstd_alone = Buffer::filled(rows, f32::NAN, guard);
    dx_args(&Null, &Null, &rstd_alone);
    assert_eq!(
        rstd_alone.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        rstd.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "{what}: rstd with and without dx"
    );

    let g = dw_geometry(rows, dim).unwrap();
    let partial = Buffer::filled(g.chunks * dim, f32::NAN, guard);
    let (rpc_i, chunks_i) = (g.rows_per_chunk as i32, g.chunks as i32);
    run("rms_norm", &kernel("bwd_dw_partial"), g.partial, &[&x_buf, &dy_buf, &rstd, &partial, &rows_i, &dim_i, &rpc_i]);
    let dw = nan_buffer::<T>(dim, guard);
    run("rms_norm", &kernel("bwd_dw_reduce"), g.reduce, &[&partial, &dw, &chunks_i, &dim_i]);
    let dw_ref = dw_ref.unwrap().to_f32_vec().unwrap();
    assert_close(&format!("{what} dw"), &widen(&dw), &dw_ref, atol * rows as f64, rtol);
}

/// The smallest case, for the kernel count.
pub fn smoke() {
    check::<f32>(1, 1, Guard::After);
    check::<half::bf16>(1, 1, Guard::After);
}

#[test]
fn f32_matches_cpu() {
    each_case(&SHAPES, |(rows, dim), guard| check::<f32>(rows, dim, guard));
}

#[test]
fn bf16_matches_cpu() {
    each_case(&SHAPES, |(rows, dim), guard| check::<half::bf16>(rows, dim, guard));
}
