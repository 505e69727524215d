//! `cuda/cross_entropy.cu` on the CPU: `cross_entropy_fwd_*` (logits [rows, vocab], targets
//! [rows] u32 → lse, loss [rows] f32, loss 0 for an ignored row) and `cross_entropy_bwd_*`
//! (dlogits [rows, vocab] = g/count · (softmax − onehot), 0 for an ignored row), f32 and
//! bf16, against `ops::cross_entropy` on the CPU with its cuda_matches_cpu tolerances (Σ loss
//! 1e-5·count + 1e-5·|ref|, lse 1e-5 + 1e-6·|ref|, dlogits 1e-3·g/(count·vocab) + the
//! dtype's rtol·|ref|).

use cuda_cpu::{Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::cross_entropy::{self, cuda::row_geometry, IGNORE_INDEX};
use sparsetune::testing::{assert_close, assert_close_f64, random_f32, random_ids};
use sparsetune::{DType, Device, Tensor};

use crate::{buffer, i32s, nan_buffer, run, tensor, tolerance, widen};

/// The loss gradient g of the op test.
const G: f32 = 1.3;

/// (rows, vocab, every n-th target ignored; 1 ignores all): the op test's cases; vocab 512
/// (a row that fills the 512-thread block) and 513 (one more: a row straddling the block's
/// end, its last element read by thread 0's second stride).
const CASES: [(usize, usize, usize); 8] =
    [(1, 1, 2), (3, 33, 2), (17, 1000, 5), (5, 50_257, 4), (2, 128_256, 3), (4, 77, 1), (2, 512, 2), (3, 513, 2)];

/// Runs both kernels the way `cross_entropy::cuda::{forward, backward}` launch them (the
/// backward from the kernel's own lse) and compares with the CPU reference.
fn check<T: CudaFloat>((rows, vocab, ignore_every): (usize, usize, usize), guard: Guard) {
    let what = format!("cross_entropy {} {rows}x{vocab} {guard:?}", T::DTYPE);
    let logits = tensor::<T>(random_f32(rows * vocab, 4.0, 50), &[rows, vocab]);
    let mut targets = random_ids(rows, vocab as u32, 51);
    targets.iter_mut().skip(ignore_every - 1).step_by(ignore_every).for_each(|t| *t = IGNORE_INDEX);
    let cpu = Device::cpu();
    let targets_t = Tensor::from_vec(targets.clone(), [rows], &cpu).unwrap();
    let (logits_buf, targets_buf) = (buffer::<T>(&logits, guard), Buffer::from_slice(&targets, guard));
    let [rows_i, vocab_i] = i32s([rows, vocab]);
    let kernel = |name: &str| format!("cross_entropy_{name}_{}", T::SUFFIX);

    let (lse, loss) = (Buffer::filled(rows, f32::NAN, guard), Buffer::filled(rows, f32::NAN, guard));
    let launch = row_geometry(rows).unwrap();
    run("cross_entropy", &kernel("fwd"), launch, &[&logits_buf, &targets_buf, &lse, &loss, &rows_i, &vocab_i]);
    let (sum, count) = cross_entropy::forward_sum(&logits, &targets_t).unwrap();
    let (loss_got, ignored) = (loss.to_vec(), |r: &usize| targets[*r] == IGNORE_INDEX);
    let sum_got: f64 = (0..rows).filter(|r| !ignored(r)).map(|r| f64::from(loss_got[r])).sum();
    assert_close_f64(&format!("{what} sum"), &[sum_got], &[sum], 1e-5 * count.max(1) as f64, 1e-5);
    assert!((0..rows).filter(ignored).all(|r| loss_got[r] == 0.0), "{what}: ignored rows' loss is not 0");
    let (_, lse_ref) = cross_entropy::forward(&logits, &targets_t).unwrap();
    assert_close(&format!("{what} lse"), &lse.to_vec(), &lse_ref.to_f32_vec().unwrap(), 1e-5, 1e-6);

    let grad = Tensor::from_f32(vec![G], (), DType::F32, &cpu).unwrap();
    let inv_count = if count == 0 { 0.0 } else { 1.0 / count as f32 };
    let dlogits = nan_buffer::<T>(rows * vocab, guard);
    run(
        "cross_entropy",
        &kernel("bwd"),
        launch,
        &[&logits_buf, &targets_buf, &lse, &Buffer::from_slice(&[G], guard), &inv_count, &dlogits, &rows_i, &vocab_i],
    );
    let d_ref = cross_entropy::backward(&logits, &targets_t, &lse_ref, &grad).unwrap().to_f32_vec().unwrap();
    let atol = 1e-3 * f64::from(G) / (count.max(1) * vocab) as f64;
    assert_close(&format!("{what} dlogits"), &widen(&dlogits), &d_ref, atol, tolerance::<T>().1);
}

f32_and_bf16_tests!(CASES[0], CASES);
