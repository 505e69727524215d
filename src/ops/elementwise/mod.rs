//! Elementwise `add`, `mul`, `scale` on same-shape tensors (no broadcasting), and the
//! in-place `add_assign` used for gradient accumulation.
//! Backward: add → (dy, dy); mul → (dy·b, dy·a); scale → dy·s.

pub mod cpu;
pub mod cuda;

use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, expect_alike, expect_float, host_f32};
use crate::storage::{FloatElement, Storage};
use crate::{with_compute_type, Device, Error, Result, Tensor};

#[derive(Clone, Copy)]
enum Binary {
    Add,
    Mul,
}

fn binary_forward(op: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = match op {
        Binary::Add => "add",
        Binary::Mul => "mul",
    };
    expect_float(name, a)?;
    expect_alike(name, a, b)?;
    let n = a.elem_count();
    match a.device() {
        Device::Cpu(_) => {
            let mut out = vec![0f32; n];
            let (x, y) = (host_f32(a)?, host_f32(b)?);
            match op {
                Binary::Add => cpu::add(&x, &y, &mut out),
                Binary::Mul => cpu::mul(&x, &y, &mut out),
            }
            Tensor::from_f32(out, a.shape().clone(), a.dtype(), a.device())
        }
        Device::Cuda(_) => with_compute_type!(a.dtype(), name, T => {
            let dev = cuda_device(a)?;
            let mut out = dev.alloc::<T>(n)?;
            cuda::binary::<T>(dev, name, a.read()?.cuda()?, b.read()?.cuda()?, out.slice_mut(), n)?;
            cuda_tensor(out, a.shape().clone(), a.device())
        }),
    }
}

/// a + b without recording.
pub fn add_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_forward(Binary::Add, a, b)
}

/// a · b without recording.
pub fn mul_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_forward(Binary::Mul, a, b)
}

/// a · s without recording.
pub fn scale_forward(a: &Tensor, s: f32) -> Result<Tensor> {
    expect_float("scale", a)?;
    let n = a.elem_count();
    match a.device() {
        Device::Cpu(_) => {
            let mut out = vec![0f32; n];
            cpu::scale(&host_f32(a)?, s, &mut out);
            Tensor::from_f32(out, a.shape().clone(), a.dtype(), a.device())
        }
        Device::Cuda(_) => with_compute_type!(a.dtype(), "scale", T => {
            let dev = cuda_device(a)?;
            let mut out = dev.alloc::<T>(n)?;
            cuda::scale::<T>(dev, a.read()?.cuda()?, s, out.slice_mut(), n)?;
            cuda_tensor(out, a.shape().clone(), a.device())
        }),
    }
}

/// a += b in place (a and b must not share storage).
pub fn add_assign(a: &Tensor, b: &Tensor) -> Result<()> {
    expect_float("add_assign", a)?;
    expect_alike("add_assign", a, b)?;
    if a.same_storage(b) {
        return Err(Error::invalid("add_assign: operands share storage"));
    }
    let n = a.elem_count();
    match a.device() {
        Device::Cpu(_) => {
            let src = host_f32(b)?.to_vec();
            let mut guard = a.write()?;
            with_compute_type!(a.dtype(), "add_assign", T => {
                let dst = guard.cpu_mut::<T>()?;
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = T::from_f32(d.to_f32() + s);
                }
                Ok(())
            })
        }
        Device::Cuda(_) => with_compute_type!(a.dtype(), "add_assign", T => {
            let dev = cuda_device(a)?;
            let src = b.read()?;
            let mut dst = a.write()?;
            let Storage::Cuda(_) = &*dst else { return Err(Error::invalid("add_assign: storage mismatch")) };
            cuda::add_assign::<T>(dev, dst.cuda_mut()?, src.cuda()?, n)
        }),
    }
}

/// a + b (same shape), recorded on `tape`.
pub fn add(tape: Option<&mut Tape>, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = add_forward(a, b)?;
    if let Some(tape) = tape {
        record_add(tape, a, b, &y);
    }
    Ok(y)
}

/// Records `y = a + b`, computed elsewhere (by a fused kernel), on `tape`: its backward
/// hands the output's gradient to both inputs.
pub(crate) fn record_add(tape: &mut Tape, a: &Tensor, b: &Tensor, y: &Tensor) {
    tape.record("add", &[a, b], y, vec![], |ctx| {
        let g = ctx.grad_out().clone();
        ctx.add_grad(0, g.clone())?;
        ctx.add_grad(1, g)
    });
}

/// a · b (same shape), recorded on `tape` (saves a and b).
pub fn mul(tape: Option<&mut Tape>, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = mul_forward(a, b)?;
    if let Some(tape) = tape {
        tape.record("mul", &[a, b], &y, vec![Saved::Keep(a.clone()), Saved::Keep(b.clone())], |ctx| {
            if ctx.needs(0) {
                let g = mul_forward(ctx.grad_out(), ctx.saved(1)?)?;
                ctx.add_grad(0, g)?;
            }
            if ctx.needs(1) {
                let g = mul_forward(ctx.grad_out(), ctx.saved(0)?)?;
                ctx.add_grad(1, g)?;
            }
            Ok(())
        });
    }
    Ok(y)
}

/// a · s, recorded on `tape`.
pub fn scale(tape: Option<&mut Tape>, a: &Tensor, s: f32) -> Result<Tensor> {
    let y = scale_forward(a, s)?;
    if let Some(tape) = tape {
        tape.record("scale", &[a], &y, vec![], move |ctx| {
            let g = scale_forward(ctx.grad_out(), s)?;
            ctx.add_grad(0, g)
        });
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random_f32};
    use crate::{device::cuda_for_tests, DType, Grads};

    fn t(v: Vec<f32>, dev: &Device) -> Tensor {
        let n = v.len();
        Tensor::from_f32(v, [n], DType::F32, dev).unwrap()
    }

    #[test]
    fn hand_worked_values_and_gradients() {
        let dev = Device::cpu();
        let (a, b) = (t(vec![1.0, -2.0, 3.0], &dev), t(vec![4.0, 5.0, -6.0], &dev));
        let mut tape = Tape::new();
        tape.watch(&a);
        tape.watch(&b);
        let s = add(Some(&mut tape), &a, &b).unwrap(); // [5, 3, -3]
        let p = mul(Some(&mut tape), &s, &a).unwrap(); // [5, -6, -9]
        let y = scale(Some(&mut tape), &p, 2.0).unwrap(); // [10, -12, -18]
        assert_eq!(y.to_f32_vec().unwrap(), vec![10.0, -12.0, -18.0]);
        let mut grads = Grads::new();
        tape.backward_from(&y, t(vec![1.0, 1.0, 1.0], &dev), &mut grads).unwrap();
        // y = 2(a+b)a: dy/da = 2(2a+b) = [12, 2, 0], dy/db = 2a = [2, -4, 6]
        assert_eq!(grads.get(&a).unwrap().to_f32_vec().unwrap(), vec![12.0, 2.0, 0.0]);
        assert_eq!(grads.get(&b).unwrap().to_f32_vec().unwrap(), vec![2.0, -4.0, 6.0]);
    }

    #[test]
    fn gradients_accumulate_across_backward_calls() {
        let dev = Device::cpu();
        let a = t(vec![1.0, 2.0], &dev);
        let mut grads = Grads::new();
        for _ in 0..3 {
            let mut tape = Tape::new();
            tape.watch(&a);
            let y = scale(Some(&mut tape), &a, 0.5).unwrap();
            tape.backward_from(&y, t(vec![1.0, 2.0], &dev), &mut grads).unwrap();
        }
        assert_eq!(grads.get(&a).unwrap().to_f32_vec().unwrap(), vec![1.5, 3.0]);
    }

    #[test]
    fn mismatches_are_errors() {
        let dev = Device::cpu();
        assert!(add_forward(&t(vec![1.0; 3], &dev), &t(vec![1.0; 4], &dev)).is_err());
        let b16 = Tensor::from_f32(vec![1.0; 3], [3], DType::BF16, &dev).unwrap();
        assert!(mul_forward(&t(vec![1.0; 3], &dev), &b16).is_err());
        let a = t(vec![1.0; 3], &dev);
        assert!(add_assign(&a, &a).is_err());
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("elementwise::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        for dtype in [DType::F32, DType::BF16] {
            for n in [1, 31, 1000, 100_003] {
                let a = Tensor::from_f32(random_f32(n, 2.0, 1), [n], dtype, &cpu).unwrap();
                let b = Tensor::from_f32(random_f32(n, 2.0, 2), [n], dtype, &cpu).unwrap();
                let (ag, bg) = (a.to_device(&gpu).unwrap(), b.to_device(&gpu).unwrap());
                let what = format!("elementwise {dtype} n={n}");
                let check = |name: &str, g: Tensor, c: Tensor| {
                    assert_close(
                        &format!("{what} {name}"),
                        &g.to_f32_vec().unwrap(),
                        &c.to_f32_vec().unwrap(),
                        1e-6,
                        1e-6,
                    )
                };
                check("add", add_forward(&ag, &bg).unwrap(), add_forward(&a, &b).unwrap());
                check("mul", mul_forward(&ag, &bg).unwrap(), mul_forward(&a, &b).unwrap());
                check("scale", scale_forward(&ag, -0.37).unwrap(), scale_forward(&a, -0.37).unwrap());
                add_assign(&ag, &bg).unwrap();
                add_assign(&a, &b).unwrap();
                check("add_assign", ag.clone(), a.clone());
                let other = if dtype == DType::F32 { DType::BF16 } else { DType::F32 };
                check("cast", ag.to_dtype(other).unwrap(), a.to_dtype(other).unwrap());
            }
        }
    }
}
