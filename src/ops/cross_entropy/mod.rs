//! Cross-entropy over the vocabulary, fused log-softmax + negative log-likelihood.
//! logits: [..., V] F32 or BF16; targets: U32 with the logits' leading dims [...].
//! Output: a scalar F32 tensor (shape []), the mean over the rows whose target is not
//! [`IGNORE_INDEX`] of `lse(row) − row[target]`, with `lse(row) = log Σ_j exp(row_j)`.
//! When every target is ignored the mean is 0 (and [`forward_sum`] reports count 0).
//! A target ≥ V other than IGNORE_INDEX is an error on both devices.
//!
//! Backward: `dlogits = g/count · (softmax(row) − onehot(target))` for counted rows, 0 for
//! ignored rows, g the scalar output gradient; dlogits has the logits' dtype. The softmax
//! is recomputed from the logits and the per-row lse ([...] F32) kept from the forward.
//! Statistics are f64 on the CPU and f32 on the GPU; the per-row losses are summed in f64
//! on the host in row order on both devices, so the sum is deterministic.

pub mod cpu;
pub mod cuda;

use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, expect_float, expect_u32, host_f32};
use crate::{with_compute_type, DType, Device, Error, Result, Shape, Tensor};

/// A target with this value contributes neither to the loss nor to the row count.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// (rows, vocab) after checking dtypes, devices and shapes.
fn check(logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    expect_float("cross_entropy", logits)?;
    expect_u32("cross_entropy", targets, logits.device())?;
    let dims = logits.dims();
    let Some((&vocab, leading)) = dims.split_last() else {
        return Err(Error::BadShape {
            op: "cross_entropy",
            shape: logits.shape().clone(),
            msg: "logits need a vocabulary dimension".into(),
        });
    };
    if vocab == 0 {
        return Err(Error::BadShape {
            op: "cross_entropy",
            shape: logits.shape().clone(),
            msg: "empty vocabulary".into(),
        });
    }
    if targets.dims() != leading {
        return Err(Error::ShapeMismatch {
            op: "cross_entropy",
            lhs: logits.shape().clone(),
            rhs: targets.shape().clone(),
        });
    }
    Ok((logits.shape().rows(), vocab))
}

/// The targets on the host and the number not ignored, or an error naming the first
/// target that is out of range.
fn host_targets(targets: &Tensor, vocab: usize) -> Result<(Vec<u32>, usize)> {
    let host = targets.to_vec::<u32>()?;
    let mut count = 0;
    for (row, &t) in host.iter().enumerate() {
        if t == IGNORE_INDEX {
            continue;
        }
        if t as usize >= vocab {
            return Err(Error::invalid(format!(
                "cross_entropy: target {t} at flat index {row} of targets {} is out of range for a vocabulary of {vocab} (ignore a row with {IGNORE_INDEX})",
                targets.shape()
            )));
        }
        count += 1;
    }
    Ok((host, count))
}

/// Σ loss over counted rows, their count, and the per-row lse (F32, the targets' shape).
fn forward_parts(logits: &Tensor, targets: &Tensor) -> Result<(f64, usize, Tensor)> {
    let (rows, vocab) = check(logits, targets)?;
    let (targets_host, count) = host_targets(targets, vocab)?;
    let lse_shape = targets.shape().clone();
    match logits.device() {
        Device::Cpu(_) => {
            let mut lse = vec![0f32; rows];
            let (sum, _) = cpu::forward(&host_f32(logits)?, &targets_host, vocab, &mut lse);
            Ok((sum, count, Tensor::from_f32(lse, lse_shape, DType::F32, logits.device())?))
        }
        Device::Cuda(_) => with_compute_type!(logits.dtype(), "cross_entropy", T => {
            let dev = cuda_device(logits)?;
            let mut lse = dev.alloc::<f32>(rows)?;
            let mut loss = dev.alloc::<f32>(rows)?;
            cuda::forward::<T>(dev, logits.read()?.cuda()?, targets.read()?.cuda()?, lse.slice_mut(), loss.slice_mut(), rows, vocab)?;
            // Row order, f64: the same sum on every run.
            let loss = dev.dtoh(loss.slice())?;
            let sum = loss.iter().zip(&targets_host).filter(|(_, &t)| t != IGNORE_INDEX).map(|(&l, _)| l as f64).sum();
            Ok((sum, count, cuda_tensor(lse, lse_shape, logits.device())?))
        }),
    }
}

/// The exact (f64) sum of the per-row losses over rows not ignored, and their count, for
/// perplexity evaluation. Records nothing.
pub fn forward_sum(logits: &Tensor, targets: &Tensor) -> Result<(f64, usize)> {
    let (sum, count, _) = forward_parts(logits, targets)?;
    Ok((sum, count))
}

/// Mean loss without recording: `(loss, lse)`, loss a scalar F32 tensor (0 when every
/// target is ignored) and lse the per-row logsumexp (F32, the targets' shape) that
/// [`backward`] needs.
pub fn forward(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (sum, count, lse) = forward_parts(logits, targets)?;
    let mean = if count == 0 { 0.0 } else { sum / count as f64 };
    let loss = Tensor::from_f32(vec![mean as f32], (), DType::F32, logits.device())?;
    Ok((loss, lse))
}

/// Gradient of the mean loss w.r.t. the logits (the logits' shape and dtype), given the
/// forward's `lse` and `grad`, the one-element F32 gradient of the loss.
pub fn backward(logits: &Tensor, targets: &Tensor, lse: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = check(logits, targets)?;
    for (t, what) in [(lse, "lse must be f32"), (grad, "the loss gradient must be f32")] {
        if t.dtype() != DType::F32 {
            return Err(Error::DType { op: "cross_entropy backward", dtype: t.dtype(), msg: what });
        }
        if !t.device().same(logits.device()) {
            return Err(Error::DeviceMismatch {
                op: "cross_entropy backward",
                lhs: logits.device().label(),
                rhs: t.device().label(),
            });
        }
    }
    targets.shape().expect_eq("cross_entropy backward", lse.shape())?;
    if grad.elem_count() != 1 {
        return Err(Error::ShapeMismatch {
            op: "cross_entropy backward",
            lhs: Shape::new(vec![]),
            rhs: grad.shape().clone(),
        });
    }
    let (targets_host, count) = host_targets(targets, vocab)?;
    let inv_count = if count == 0 { 0.0 } else { 1.0 / count as f64 };
    match logits.device() {
        Device::Cpu(_) => {
            let scale = grad.to_scalar_f32()? as f64 * inv_count;
            let mut dlogits = vec![0f32; rows * vocab];
            cpu::backward(&host_f32(logits)?, &targets_host, &host_f32(lse)?, scale, vocab, &mut dlogits);
            Tensor::from_f32(dlogits, logits.shape().clone(), logits.dtype(), logits.device())
        }
        Device::Cuda(_) => with_compute_type!(logits.dtype(), "cross_entropy", T => {
            let dev = cuda_device(logits)?;
            let mut dlogits = dev.alloc::<T>(rows * vocab)?;
            cuda::backward::<T>(
                dev, logits.read()?.cuda()?, targets.read()?.cuda()?, lse.read()?.cuda()?, grad.read()?.cuda()?,
                inv_count as f32, dlogits.slice_mut(), rows, vocab,
            )?;
            cuda_tensor(dlogits, logits.shape().clone(), logits.device())
        }),
    }
}

/// Mean cross-entropy (scalar F32), recorded on `tape` when the logits are tracked.
/// Saves the logits, the targets and the per-row lse.
pub fn cross_entropy(tape: Option<&mut Tape>, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (loss, lse) = forward(logits, targets)?;
    if let Some(tape) = tape {
        let saved = vec![Saved::Keep(logits.clone()), Saved::Keep(targets.clone()), Saved::Keep(lse)];
        tape.record("cross_entropy", &[logits], &loss, saved, |ctx| {
            let dlogits = backward(ctx.saved(0)?, ctx.saved(1)?, ctx.saved(2)?, ctx.grad_out())?;
            ctx.add_grad(0, dlogits)
        });
    }
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda_for_tests;
    use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f32, random_f64};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random targets below `vocab`, every `ignore_every`-th one ignored.
    fn random_targets(rows: usize, vocab: usize, ignore_every: usize, seed: u64) -> Vec<u32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..rows)
            .map(
                |r| if r % ignore_every == ignore_every - 1 { IGNORE_INDEX } else { rng.random_range(0..vocab as u32) },
            )
            .collect()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let vocab = 7;
        let targets = [2, IGNORE_INDEX, 6, 0];
        let rows = targets.len();
        let logits = random_f64(rows * vocab, 3.0, 1);
        let g = 0.7;
        let mean_loss = |x: &[f64]| {
            let mut lse = vec![0.0; rows];
            let (sum, count) = cpu::forward(x, &targets, vocab, &mut lse);
            vec![sum / count as f64]
        };
        let mut lse = vec![0.0; rows];
        let (_, count) = cpu::forward(&logits, &targets, vocab, &mut lse);
        assert_eq!(count, 3);
        let mut dlogits = vec![f64::NAN; rows * vocab];
        cpu::backward(&logits, &targets, &lse, g / count as f64, vocab, &mut dlogits);
        let fd = finite_diff(mean_loss, &logits, &[g], 1e-6);
        assert_close_f64("cross_entropy dlogits", &dlogits, &fd, 1e-8, 1e-6);
        assert!(dlogits[vocab..2 * vocab].iter().all(|&v| v == 0.0), "the ignored row gets zero");
    }

    #[test]
    fn hand_worked_values_and_ignored_rows() {
        let dev = Device::cpu();
        // Row 0: uniform over 4 → loss ln 4. Row 1: [ln 3, 0, 0, 0] with target 0 → ln 6 − ln 3.
        let ln3 = 3f32.ln();
        let logits = Tensor::from_f32(vec![0.0, 0.0, 0.0, 0.0, ln3, 0.0, 0.0, 0.0], [2, 4], DType::F32, &dev).unwrap();
        let targets = Tensor::from_vec(vec![1u32, 0], [2], &dev).unwrap();
        let (sum, count) = forward_sum(&logits, &targets).unwrap();
        assert_eq!(count, 2);
        assert!((sum - (4f64.ln() + 2f64.ln())).abs() < 1e-6, "{sum}");
        let (loss, lse) = forward(&logits, &targets).unwrap();
        assert_eq!(loss.dims(), [] as [usize; 0]);
        assert!((loss.to_scalar_f32().unwrap() as f64 - (4f64.ln() + 2f64.ln()) / 2.0).abs() < 1e-6);
        assert_eq!(lse.dims(), [2]);

        // Every target ignored: loss 0, count 0, zero gradient.
        let none = Tensor::from_vec(vec![IGNORE_INDEX; 2], [2], &dev).unwrap();
        assert_eq!(forward_sum(&logits, &none).unwrap(), (0.0, 0));
        let (loss, lse) = forward(&logits, &none).unwrap();
        assert_eq!(loss.to_scalar_f32().unwrap(), 0.0);
        let one = Tensor::from_f32(vec![1.0], (), DType::F32, &dev).unwrap();
        let d = backward(&logits, &none, &lse, &one).unwrap();
        assert!(d.to_f32_vec().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn tape_routes_gradient_to_watched_logits() {
        let dev = Device::cpu();
        let logits = Tensor::from_f32(random_f32(2 * 3 * 11, 2.0, 2), [2, 3, 11], DType::F32, &dev).unwrap();
        let targets = Tensor::from_vec(vec![0u32, 10, IGNORE_INDEX, 5, 5, 3], [2, 3], &dev).unwrap();

        let mut untracked = Tape::new();
        cross_entropy(Some(&mut untracked), &logits, &targets).unwrap();
        assert!(untracked.is_empty(), "the logits are not tracked, so nothing is recorded");

        let mut tape = Tape::new();
        tape.watch(&logits);
        let loss = cross_entropy(Some(&mut tape), &logits, &targets).unwrap();
        assert_eq!(tape.saved_report()[0].kept.len(), 3, "logits, targets and lse are kept");
        let mut grads = crate::Grads::new();
        tape.backward(&loss, &mut grads).unwrap();
        let (_, lse) = forward(&logits, &targets).unwrap();
        let one = Tensor::from_f32(vec![1.0], (), DType::F32, &dev).unwrap();
        let want = backward(&logits, &targets, &lse, &one).unwrap();
        assert_eq!(grads.get(&logits).unwrap().to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
        assert!(grads.get(&targets).is_none(), "targets are integers and get no gradient");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::cpu();
        let logits = Tensor::zeros([2, 3, 5], DType::F32, &dev).unwrap();
        let targets = Tensor::zeros([3, 2], DType::U32, &dev).unwrap();
        let e = forward(&logits, &targets).unwrap_err().to_string();
        assert!(e.contains("[2, 3, 5]") && e.contains("[3, 2]"), "{e}");

        let targets = Tensor::from_vec(vec![0u32, 1, 2, 3, 4, 5], [2, 3], &dev).unwrap();
        let e = forward_sum(&logits, &targets).unwrap_err().to_string();
        assert!(e.contains("target 5") && e.contains("vocabulary of 5"), "{e}");

        let float_targets = Tensor::zeros([2, 3], DType::F32, &dev).unwrap();
        assert!(forward(&logits, &float_targets).unwrap_err().to_string().contains("u32"));
        let scalar = Tensor::zeros((), DType::F32, &dev).unwrap();
        assert!(forward(&scalar, &Tensor::zeros((), DType::U32, &dev).unwrap()).is_err());

        let targets = Tensor::zeros([2, 3], DType::U32, &dev).unwrap();
        let (_, lse) = forward(&logits, &targets).unwrap();
        let bf16_grad = Tensor::zeros((), DType::BF16, &dev).unwrap();
        assert!(backward(&logits, &targets, &lse, &bf16_grad).is_err());
        let two = Tensor::zeros([2], DType::F32, &dev).unwrap();
        assert!(backward(&logits, &targets, &lse, &two).unwrap_err().to_string().contains("[2]"));
        let e = backward(&logits, &targets, &two, &scalar).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[2]"), "{e}");
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("cross_entropy::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        let g = 1.3f32;
        for (dtype, drtol) in [(DType::F32, 1e-4), (DType::BF16, 1e-2)] {
            // (rows, vocab, every n-th target ignored; 1 ignores all)
            for (rows, vocab, ignore_every) in
                [(1, 1, 2), (3, 33, 2), (17, 1000, 5), (5, 50_257, 4), (2, 128_256, 3), (4, 77, 1)]
            {
                let logits = Tensor::from_f32(random_f32(rows * vocab, 4.0, 50), [rows, vocab], dtype, &cpu).unwrap();
                let targets = Tensor::from_vec(random_targets(rows, vocab, ignore_every, 51), [rows], &cpu).unwrap();
                let grad = Tensor::from_f32(vec![g], (), DType::F32, &cpu).unwrap();
                let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
                let (logits_g, targets_g, grad_g) = (on_gpu(&logits), on_gpu(&targets), on_gpu(&grad));
                let what = format!("cross_entropy {dtype} {rows}x{vocab}");

                let (sum, count) = forward_sum(&logits, &targets).unwrap();
                let (sum_g, count_g) = forward_sum(&logits_g, &targets_g).unwrap();
                assert_eq!(count_g, count, "{what} count");
                // The per-row losses are f32 on the GPU (lse ≈ ln V + a few).
                assert_close_f64(&format!("{what} sum"), &[sum_g], &[sum], 1e-5 * count.max(1) as f64, 1e-5);

                let (loss, lse) = forward(&logits, &targets).unwrap();
                let (loss_g, lse_g) = forward(&logits_g, &targets_g).unwrap();
                assert_close(
                    &format!("{what} loss"),
                    &loss_g.to_f32_vec().unwrap(),
                    &loss.to_f32_vec().unwrap(),
                    1e-5,
                    1e-5,
                );
                assert_close(
                    &format!("{what} lse"),
                    &lse_g.to_f32_vec().unwrap(),
                    &lse.to_f32_vec().unwrap(),
                    1e-5,
                    1e-6,
                );

                let d = backward(&logits, &targets, &lse, &grad).unwrap().to_f32_vec().unwrap();
                let d_g = backward(&logits_g, &targets_g, &lse_g, &grad_g).unwrap();
                assert_eq!(d_g.dtype(), dtype);
                // A typical entry is g/(count·V); allow 0.1% of that absolutely, the rest relatively.
                let atol = 1e-3 * g as f64 / (count.max(1) * vocab) as f64;
                assert_close(&format!("{what} dlogits"), &d_g.to_f32_vec().unwrap(), &d, atol, drtol);
            }
        }
        // Out-of-range targets are refused on the GPU too, before any kernel runs.
        let logits = Tensor::zeros([2, 4], DType::F32, &gpu).unwrap();
        let targets = Tensor::from_vec(vec![IGNORE_INDEX, 4], [2], &gpu).unwrap();
        assert!(forward_sum(&logits, &targets).unwrap_err().to_string().contains("target 4"));
    }
}
