//! Rotary position embedding (RoPE) in the Hugging Face "rotate-half" convention, which
//! our loader uses for every model. x: [batch, seq, heads, head_dim] (head_dim even),
//! y like x; token t sits at position p = pos_offset + t ([`forward_at`]: x [N, heads,
//! head_dim], token n at its own position p = positions\[n\]). With half = head_dim/2, i < half,
//! and the caller's inverse frequencies inv_freq [half] (f32; the model config computes
//! them, scaling included; [`cpu::inv_freq`] is the unscaled table 1 / theta^(2i/head_dim)):
//!   angle = p·inv_freq_i  (one f32 multiply, as HF)
//!   y_i = x_i·cos − x_{i+half}·sin,  y_{i+half} = x_{i+half}·cos + x_i·sin
//! Backward is the inverse rotation: dx_i = dy_i·cos + dy_{i+half}·sin,
//! dx_{i+half} = dy_{i+half}·cos − dy_i·sin. Nothing is saved for backward.
//! See `cpu.rs` for how the CPU reference and the kernel agree on the angles.

pub mod cpu;
pub mod cuda;

use cpu::{Positions, RopeDims};

use crate::autograd::Tape;
use crate::ops::{cuda_device, cuda_tensor, expect_float, host_f32};
use crate::{with_compute_type, Device, Error, Result, Tensor};

/// Largest position + 1: positions must be exact in f32 (2²⁴).
const MAX_POSITIONS: usize = 1 << 24;

/// Error unless x is a float tensor of heads of `head_dim` (even, nonzero) features and
/// inv_freq holds head_dim / 2 finite frequencies.
fn check_heads(x: &Tensor, inv_freq: &[f32], head_dim: usize) -> Result<()> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::BadShape {
            op: "rope",
            shape: x.shape().clone(),
            msg: "head_dim must be even and nonzero".into(),
        });
    }
    if inv_freq.len() != head_dim / 2 {
        return Err(Error::invalid(format!(
            "rope: {} inverse frequencies for head_dim {head_dim} (expected {})",
            inv_freq.len(),
            head_dim / 2
        )));
    }
    if let Some(bad) = inv_freq.iter().find(|f| !f.is_finite()) {
        return Err(Error::invalid(format!("rope: inverse frequency {bad} is not finite")));
    }
    Ok(())
}

/// Error unless heads of `head_dim` features (of `x`, named in the error) can be rotated
/// with `inv_freq` at positions pos_offset..pos_offset + seq.
pub(crate) fn check_sequences(
    x: &Tensor,
    inv_freq: &[f32],
    head_dim: usize,
    pos_offset: usize,
    seq: usize,
) -> Result<()> {
    check_heads(x, inv_freq, head_dim)?;
    if pos_offset.saturating_add(seq) > MAX_POSITIONS {
        return Err(Error::invalid(format!(
            "rope: positions {pos_offset}..{} exceed {MAX_POSITIONS} (not exact in f32)",
            pos_offset.saturating_add(seq)
        )));
    }
    Ok(())
}

/// x [batch, seq, heads, head_dim] rotated for positions pos_offset + t (forward or inverse).
fn rotate_sequences(x: &Tensor, inv_freq: &[f32], pos_offset: usize, inverse: bool) -> Result<Tensor> {
    expect_float("rope", x)?;
    let [batch, seq, heads, head_dim] = x.shape().dims_n::<4>("rope")?;
    check_sequences(x, inv_freq, head_dim, pos_offset, seq)?;
    let d = RopeDims { tokens: batch * seq, heads, head_dim };
    rotate(x, inv_freq, d, Positions::Offset { seq, pos_offset }, inverse)
}

/// The rotation of every token of x (checked by the callers) on x's device.
fn rotate(x: &Tensor, inv_freq: &[f32], d: RopeDims, positions: Positions<'_>, inverse: bool) -> Result<Tensor> {
    match x.device() {
        Device::Cpu(_) => {
            let mut y = vec![0f32; x.elem_count()];
            cpu::rotate(&host_f32(x)?, inv_freq, d, &positions.per_token(d.tokens), inverse, &mut y);
            Tensor::from_f32(y, x.shape().clone(), x.dtype(), x.device())
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "rope", T => {
            let dev = cuda_device(x)?;
            // The kernel uses this very table, so both devices see the same f32 angles.
            let inv_freq = dev.htod(inv_freq)?;
            let mut y = dev.alloc::<T>(x.elem_count())?;
            cuda::rotate::<T>(dev, x.read()?.cuda()?, inv_freq.slice(), y.slice_mut(), d, positions, inverse)?;
            cuda_tensor(y, x.shape().clone(), x.device())
        }),
    }
}

/// RoPE without recording: `x` [batch, seq, heads, head_dim] rotated for positions
/// `pos_offset..pos_offset + seq` with inverse frequencies `inv_freq` [head_dim / 2].
pub fn forward(x: &Tensor, inv_freq: &[f32], pos_offset: usize) -> Result<Tensor> {
    rotate_sequences(x, inv_freq, pos_offset, false)
}

/// Gradient of [`forward`]: `dy` rotated back (the inverse rotation), shape of `dy`.
pub fn backward(dy: &Tensor, inv_freq: &[f32], pos_offset: usize) -> Result<Tensor> {
    rotate_sequences(dy, inv_freq, pos_offset, true)
}

/// RoPE at explicit positions (generation, no gradient): `x` [N, heads, head_dim], token n
/// rotated for position `positions[n]` exactly as [`forward`] rotates a token at that position.
pub fn forward_at(x: &Tensor, inv_freq: &[f32], positions: &[u32]) -> Result<Tensor> {
    expect_float("rope", x)?;
    let [tokens, heads, head_dim] = x.shape().dims_n::<3>("rope")?;
    check_heads(x, inv_freq, head_dim)?;
    if positions.len() != tokens {
        return Err(Error::invalid(format!(
            "rope: {} has {tokens} tokens, given {} positions",
            x.shape(),
            positions.len()
        )));
    }
    if let Some(p) = positions.iter().find(|&&p| p as usize >= MAX_POSITIONS) {
        return Err(Error::invalid(format!("rope: position {p} exceeds {MAX_POSITIONS} (not exact in f32)")));
    }
    rotate(x, inv_freq, RopeDims { tokens, heads, head_dim }, Positions::Each(positions), false)
}

/// RoPE, recorded on `tape` when x is tracked (saves nothing but the frequency table:
/// backward needs only it and the offset).
pub fn rope(tape: Option<&mut Tape>, x: &Tensor, inv_freq: &[f32], pos_offset: usize) -> Result<Tensor> {
    let y = forward(x, inv_freq, pos_offset)?;
    if let Some(tape) = tape {
        let inv_freq = inv_freq.to_vec();
        tape.record("rope", &[x], &y, vec![], move |ctx| {
            let dx = backward(ctx.grad_out(), &inv_freq, pos_offset)?;
            ctx.add_grad(0, dx)
        });
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f32, random_f64};
    use crate::{device::cuda_for_tests, DType};

    #[test]
    fn backward_matches_finite_differences() {
        // [2, 3, 2, 6] from position 5: 6 tokens at 5, 6, 7, 5, 6, 7.
        let d = RopeDims { tokens: 2 * 3, heads: 2, head_dim: 6 };
        let positions = Positions::Offset { seq: 3, pos_offset: 5 }.per_token(d.tokens);
        assert_eq!(*positions, [5, 6, 7, 5, 6, 7]);
        let n = d.tokens * d.heads * d.head_dim;
        let inv_freq = cpu::inv_freq(10_000.0, d.head_dim);
        let x = random_f64(n, 1.0, 1);
        let dy = random_f64(n, 1.0, 2);
        let mut dx = vec![0.0; n];
        cpu::rotate(&dy, &inv_freq, d, &positions, true, &mut dx);
        let fd = finite_diff(
            |x| {
                let mut y = vec![0.0; n];
                cpu::rotate(x, &inv_freq, d, &positions, false, &mut y);
                y
            },
            &x,
            &dy,
            1e-6,
        );
        assert_close_f64("rope dx", &dx, &fd, 1e-8, 1e-6);
    }

    #[test]
    fn matches_hand_computed_rotation() {
        // head_dim 4, theta 10000: inv_freq = [1, 10000^(-1/2)] = [1, 0.01].
        assert_eq!(cpu::inv_freq(10_000.0, 4), vec![1.0, 0.01]);
        let dev = Device::cpu();
        let x = Tensor::from_f32(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 1, 4], DType::F32, &dev).unwrap();
        let y = forward(&x, &cpu::inv_freq(10_000.0, 4), 3).unwrap().to_f32_vec().unwrap();
        let (s0, c0) = 3f64.sin_cos();
        let (s1, c1) = ((3f32 * 0.01f32) as f64).sin_cos();
        let want = [1.0 * c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 3.0 * c0 + 1.0 * s0, 4.0 * c1 + 2.0 * s1];
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_close("rope by hand", &y, &want, 1e-7, 1e-6);
        // Position 0 is the identity; the inverse rotation undoes the forward one.
        assert_eq!(
            forward(&x, &cpu::inv_freq(10_000.0, 4), 0).unwrap().to_f32_vec().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        let back =
            backward(&forward(&x, &cpu::inv_freq(10_000.0, 4), 3).unwrap(), &cpu::inv_freq(10_000.0, 4), 3).unwrap();
        assert_close("rope round trip", &back.to_f32_vec().unwrap(), &[1.0, 2.0, 3.0, 4.0], 1e-6, 1e-6);
    }

    /// forward_at with the positions forward counts is forward, bit for bit: a prefill from
    /// p0 (one sequence) and a batch of sequences from 0 (positions repeating per sequence).
    #[test]
    fn forward_at_consecutive_positions_is_forward() {
        let dev = Device::cpu();
        for (batch, seq, heads, head_dim, p0) in [(1, 9, 3, 10, 7), (1, 1, 2, 4, 4000), (3, 5, 2, 8, 0)] {
            let table = cpu::inv_freq(10_000.0, head_dim);
            let n = batch * seq * heads * head_dim;
            let x = Tensor::from_f32(random_f32(n, 1.0, 5), [batch, seq, heads, head_dim], DType::F32, &dev).unwrap();
            let want = forward(&x, &table, p0).unwrap().to_f32_vec().unwrap();
            let positions: Vec<u32> = (0..batch * seq).map(|t| (p0 + t % seq) as u32).collect();
            let rows = x.reshape([batch * seq, heads, head_dim]).unwrap();
            let got = forward_at(&rows, &table, &positions).unwrap();
            assert_eq!(got.dims(), [batch * seq, heads, head_dim]);
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(bits(got.to_f32_vec().unwrap()), bits(want), "[{batch}, {seq}, {heads}, {head_dim}] from {p0}");
        }
    }

    /// Tokens at positions 3, 0 and 1000 (out of order), head_dim 4, theta 10000.
    #[test]
    fn forward_at_matches_hand_computation() {
        let dev = Device::cpu();
        let table = cpu::inv_freq(10_000.0, 4);
        let x: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 2.0, -3.0, 0.25, -2.0, 1.5, 1.0];
        let rows = Tensor::from_f32(x.clone(), [3, 1, 4], DType::F32, &dev).unwrap();
        let positions = [3u32, 0, 1000];
        let y = forward_at(&rows, &table, &positions).unwrap().to_f32_vec().unwrap();
        let mut want = Vec::new();
        for (xr, &p) in x.chunks(4).zip(&positions) {
            // angle_i = p·inv_freq_i in f32 (inv_freq = [1, 0.01]), cos/sin in f64.
            let (s0, c0) = ((p as f32 * 1.0f32) as f64).sin_cos();
            let (s1, c1) = ((p as f32 * 0.01f32) as f64).sin_cos();
            let [a0, a1, b0, b1] = [xr[0], xr[1], xr[2], xr[3]].map(f64::from);
            want.extend([a0 * c0 - b0 * s0, a1 * c1 - b1 * s1, b0 * c0 + a0 * s0, b1 * c1 + a1 * s1].map(|v| v as f32));
        }
        assert_close("rope at positions by hand", &y, &want, 1e-7, 1e-6);
        assert_eq!(y[4..8], x[4..8], "position 0 is the identity");
        // One token alone gets the same rotation as within the batch.
        let one = Tensor::from_f32(x[8..].to_vec(), [1, 1, 4], DType::F32, &dev).unwrap();
        assert_eq!(forward_at(&one, &table, &[1000]).unwrap().to_f32_vec().unwrap(), y[8..]);
    }

    #[test]
    fn forward_at_bad_inputs_are_errors() {
        let dev = Device::cpu();
        let table = cpu::inv_freq(10_000.0, 4);
        let x = Tensor::zeros([2, 3, 4], DType::F32, &dev).unwrap();
        let e = forward_at(&x, &table, &[0]).unwrap_err().to_string();
        assert!(e.contains("[2, 3, 4] has 2 tokens") && e.contains("1 positions"), "{e}");
        let e = forward_at(&x, &table, &[0, MAX_POSITIONS as u32]).unwrap_err().to_string();
        assert!(e.contains("exceeds"), "{e}");
        let e =
            forward_at(&Tensor::zeros([1, 2, 3, 4], DType::F32, &dev).unwrap(), &table, &[0]).unwrap_err().to_string();
        assert!(e.contains("rank 3"), "{e}");
        let odd = Tensor::zeros([2, 3, 5], DType::F32, &dev).unwrap();
        assert!(forward_at(&odd, &table, &[0, 1]).unwrap_err().to_string().contains("even"));
        assert!(forward_at(&x, &[1.0], &[0, 1]).unwrap_err().to_string().contains("expected 2"));
        assert!(forward_at(&Tensor::zeros([2, 3, 4], DType::U32, &dev).unwrap(), &table, &[0, 1]).is_err());
    }

    #[test]
    fn tape_routes_gradient_to_watched_input() {
        let dev = Device::cpu();
        let x = Tensor::from_f32(random_f32(2 * 3 * 2 * 8, 1.0, 3), [2, 3, 2, 8], DType::F32, &dev).unwrap();
        let dy = Tensor::from_f32(random_f32(2 * 3 * 2 * 8, 1.0, 4), [2, 3, 2, 8], DType::F32, &dev).unwrap();

        let mut untracked = Tape::new();
        rope(Some(&mut untracked), &x, &cpu::inv_freq(10_000.0, 8), 7).unwrap();
        assert!(untracked.is_empty(), "x is not tracked, so nothing is recorded");

        let mut tape = Tape::new();
        tape.watch(&x);
        let y = rope(Some(&mut tape), &x, &cpu::inv_freq(10_000.0, 8), 7).unwrap();
        assert!(tape.saved_report()[0].kept.is_empty(), "rope keeps no tensor alive");
        let mut grads = crate::Grads::new();
        tape.backward_from(&y, dy.clone(), &mut grads).unwrap();
        let dx = backward(&dy, &cpu::inv_freq(10_000.0, 8), 7).unwrap();
        assert_eq!(grads.get(&x).unwrap().to_f32_vec().unwrap(), dx.to_f32_vec().unwrap());
        assert!(grads.get(&dy).is_none());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::cpu();
        let table = cpu::inv_freq(10_000.0, 4);
        let rank3 = Tensor::zeros([2, 3, 8], DType::F32, &dev).unwrap();
        let e = forward(&rank3, &table, 0).unwrap_err().to_string();
        assert!(e.contains("[2, 3, 8]") && e.contains("rank 4"), "{e}");
        let odd = Tensor::zeros([1, 2, 3, 5], DType::F32, &dev).unwrap();
        let e = forward(&odd, &table, 0).unwrap_err().to_string();
        assert!(e.contains("[1, 2, 3, 5]") && e.contains("even"), "{e}");
        let x = Tensor::zeros([1, 2, 3, 4], DType::F32, &dev).unwrap();
        let e = forward(&x, &[1.0], 0).unwrap_err().to_string();
        assert!(e.contains("1 inverse frequencies") && e.contains("expected 2"), "{e}");
        assert!(forward(&x, &[1.0, f32::NAN], 0).is_err());
        let e = forward(&x, &cpu::inv_freq(10_000.0, 4), MAX_POSITIONS - 1).unwrap_err().to_string();
        assert!(e.contains("exceed"), "{e}");
        assert!(forward(&x, &cpu::inv_freq(10_000.0, 4), usize::MAX).is_err(), "no overflow panic");
        let ids = Tensor::zeros([1, 2, 3, 4], DType::U32, &dev).unwrap();
        assert!(forward(&ids, &table, 0).is_err());
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("rope::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        for (dtype, atol, rtol) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 1e-2, 1e-2)] {
            // (batch, seq, heads, head_dim, pos_offset, theta); the last cases reach p = 8000.
            for (b, t, h, d, offset, theta) in [
                (1, 1, 1, 2, 0, 10_000.0),
                (2, 7, 3, 10, 1, 10_000.0),
                (1, 37, 5, 66, 100, 500_000.0),
                (2, 33, 4, 128, 7967, 10_000.0),
                (1, 3, 2, 256, 7997, 500_000.0),
            ] {
                let n = b * t * h * d;
                let mk = |seed| Tensor::from_f32(random_f32(n, 1.0, seed), [b, t, h, d], dtype, &cpu).unwrap();
                let (x, dy) = (mk(30), mk(31));
                let (xg, dyg) = (x.to_device(&gpu).unwrap(), dy.to_device(&gpu).unwrap());
                let what = format!("rope {dtype} [{b}, {t}, {h}, {d}] from {offset} theta {theta}");
                let table = cpu::inv_freq(theta, d);
                let y = forward(&x, &table, offset).unwrap().to_f32_vec().unwrap();
                let yg = forward(&xg, &table, offset).unwrap().to_f32_vec().unwrap();
                assert_close(&format!("{what} y"), &yg, &y, atol, rtol);
                let dx = backward(&dy, &table, offset).unwrap().to_f32_vec().unwrap();
                let dxg = backward(&dyg, &table, offset).unwrap().to_f32_vec().unwrap();
                assert_close(&format!("{what} dx"), &dxg, &dx, atol, rtol);
                // The same tokens at positions of their own (out of order, up to 8000).
                let positions: Vec<u32> = (0..b * t).map(|i| ((offset + 4099 * i) % 8001) as u32).collect();
                let (rows, rowsg) = (x.reshape([b * t, h, d]).unwrap(), xg.reshape([b * t, h, d]).unwrap());
                let y_at = forward_at(&rows, &table, &positions).unwrap().to_f32_vec().unwrap();
                let yg_at = forward_at(&rowsg, &table, &positions).unwrap().to_f32_vec().unwrap();
                assert_close(&format!("{what} at positions"), &yg_at, &y_at, atol, rtol);
            }
        }
    }
}
