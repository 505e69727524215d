use super::*;
use crate::ops::sparse_cases::{f64s, sparse_case, SparseCase};
use crate::sparse::{BitMask, SparseFormat};
use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f64};
use crate::{device::cuda_for_tests, Grads};

/// The reference's gradients are the derivatives of its forward, dW zero where pruned.
#[test]
fn reference_gradients_match_finite_differences() {
    let d = Dims { tokens: 4, input: 6, output: 5 };
    let keep: Vec<bool> = (0..30).map(|k| (k * 7) % 3 != 0).collect();
    let mut w = random_f64(30, 1.0, 2);
    for (v, &k) in w.iter_mut().zip(&keep) {
        if !k {
            *v = 0.0;
        }
    }
    let (x, dy) = (random_f64(24, 1.0, 1), random_f64(20, 1.0, 5));
    let (dx, dw) = cpu::backward(&x, &w, &keep, &dy, d);
    assert_close_f64("dx", &dx, &finite_diff(|x| cpu::forward(x, &w, d), &x, &dy, 1e-6), 1e-8, 1e-6);
    let fd_w = finite_diff(|w| cpu::forward(&x, w, d), &w, &dy, 1e-6);
    let masked: Vec<f64> = fd_w.iter().zip(&keep).map(|(&g, &k)| if k { g } else { 0.0 }).collect();
    assert_close_f64("dW", &dw, &masked, 1e-8, 1e-6);
}

/// The op's sizes for a case.
fn dims(c: &SparseCase) -> Dims {
    Dims { tokens: c.tokens, input: c.mask.cols(), output: c.mask.rows() }
}

/// The reference's dense dW at the kept positions, in value order (row-major).
fn kept_of(dw: &[f64], mask: &BitMask) -> Vec<f64> {
    (0..mask.rows() * mask.cols()).filter(|&k| mask.get(k / mask.cols(), k % mask.cols())).map(|k| dw[k]).collect()
}

#[test]
fn cpu_path_matches_the_dense_reference() {
    let dev = Device::cpu();
    for (lead, input, output, format) in [
        (vec![1, 7], 37, 29, SparseFormat::Bitmask),
        (vec![2, 5], 64, 33, SparseFormat::NM { n: 2, m: 4 }),
        (vec![3, 1], 16, 80, SparseFormat::Bitmask),
        (vec![2, 3], 24, 9, SparseFormat::NM { n: 4, m: 8 }),
    ] {
        let c = sparse_case(&dev, DType::F32, &lead, input, output, format, 9);
        let (x, dy) = (f64s(&c.x), f64s(&c.dy));
        let w: Vec<f64> = c.w_dense.iter().map(|&v| v as f64).collect();
        let keep: Vec<bool> = (0..output * input).map(|k| c.mask.get(k / input, k % input)).collect();
        let what = format!("{input}->{output} {format:?}");
        let y = forward(&c.x, &c.w).unwrap();
        assert_eq!(y.dims()[..lead.len()], lead[..]);
        assert_close_f64(&format!("{what} y"), &f64s(&y), &cpu::forward(&x, &w, dims(&c)), 1e-5, 1e-5);
        let (rdx, rdw) = cpu::backward(&x, &w, &keep, &dy, dims(&c));
        let (dx, dv) = backward(&c.x, &c.w, &c.dy, true, true).unwrap();
        assert_close_f64(&format!("{what} dx"), &f64s(&dx.unwrap()), &rdx, 1e-5, 1e-5);
        let dv = dv.unwrap();
        assert_eq!(dv.dims(), c.w.values().dims(), "the gradient has the values' shape");
        assert_close_f64(&format!("{what} dvalues"), &f64s(&dv), &kept_of(&rdw, &c.mask), 1e-5, 1e-5);
    }
}

#[test]
fn tape_tracks_the_values_and_keeps_no_out_by_in_tensor() {
    let dev = Device::cpu();
    let c = sparse_case(&dev, DType::F32, &[2, 9], 48, 40, SparseFormat::Bitmask, 3);
    let mut tape = Tape::new();
    tape.watch(c.w.values());
    let y = sparse_linear(Some(&mut tape), &c.x, &c.w).unwrap();
    let report = tape.saved_report();
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].recomputed, vec![RECOMPUTED]);
    for (shape, _) in &report[0].kept {
        assert_ne!(shape.elem_count(), 40 * 48, "an out × in tensor is kept: {shape}");
    }
    let mut grads = Grads::new();
    tape.backward_from(&y, c.dy.clone(), &mut grads).unwrap();
    let (_, dv) = backward(&c.x, &c.w, &c.dy, false, true).unwrap();
    assert_eq!(grads.get(c.w.values()).unwrap().to_f32_vec().unwrap(), dv.unwrap().to_f32_vec().unwrap());
    assert!(grads.get(&c.x).is_none());
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::cpu();
    let c = sparse_case(&dev, DType::F32, &[3], 16, 8, SparseFormat::Bitmask, 1);
    let wrong_x = Tensor::zeros([3, 17], DType::F32, &dev).unwrap();
    assert!(forward(&wrong_x, &c.w).unwrap_err().to_string().contains("[3, 17]"));
    let b16 = sparse_case(&dev, DType::BF16, &[3], 16, 8, SparseFormat::Bitmask, 1);
    assert!(forward(&b16.x, &b16.w).unwrap_err().to_string().contains("f32"));
}

#[test]
fn cuda_matches_cpu() {
    let Some(gpu) = cuda_for_tests("sparse_linear::cuda_matches_cpu") else { return };
    let cpu = Device::cpu();
    for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-4), (DType::BF16, 5e-2, 3e-2)] {
        for (lead, input, output, format) in [
            (vec![1, 7], 37, 29, SparseFormat::Bitmask),
            (vec![2, 65], 576, 192, SparseFormat::Bitmask),
            (vec![3, 33], 256, 100, SparseFormat::NM { n: 2, m: 4 }),
            (vec![1, 130], 1536, 576, SparseFormat::NM { n: 4, m: 8 }),
        ] {
            let c = sparse_case(&cpu, dtype, &lead, input, output, format, 17);
            let to32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let w32 = c.w.to_dtype(DType::F32).unwrap();
            let (x, dy) = (to32(&c.x), to32(&c.dy));
            let g = |t: &Tensor| t.to_device(&gpu).unwrap();
            let wg = c.w.to_device(&gpu).unwrap();
            let what = format!("{dtype} {input}->{output} {format:?}");
            let y = forward(&x, &w32).unwrap().to_f32_vec().unwrap();
            let yg = forward(&g(&c.x), &wg).unwrap().to_f32_vec().unwrap();
            assert_close(&format!("{what} y"), &yg, &y, atol * (input as f64).sqrt(), rtol);
            let (dx, dv) = backward(&x, &w32, &dy, true, true).unwrap();
            let (gx, gv) = backward(&g(&c.x), &wg, &g(&c.dy), true, true).unwrap();
            let (gx, gv) = (gx.unwrap().to_f32_vec().unwrap(), gv.unwrap().to_f32_vec().unwrap());
            assert_close(
                &format!("{what} dx"),
                &gx,
                &dx.unwrap().to_f32_vec().unwrap(),
                atol * (output as f64).sqrt(),
                rtol,
            );
            let tol_t = (dims(&c).tokens as f64).sqrt();
            assert_close(&format!("{what} dvalues"), &gv, &dv.unwrap().to_f32_vec().unwrap(), atol * tol_t, rtol);
        }
    }
}
