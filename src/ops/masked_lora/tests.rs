use super::*;
use super::{masked_lora_qkv_rope, Heads, MaskedLora};
use crate::ops::sparse_cases::{f64s, random_tensor, sparse_case};
use crate::sparse::{BitMask, SparseFormat};
use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f64};
use crate::{device::cuda_for_tests, Grads};

fn keep_of(mask: &BitMask) -> Vec<bool> {
    (0..mask.rows() * mask.cols()).map(|k| mask.get(k / mask.cols(), k % mask.cols())).collect()
}

/// The reference's gradients are the derivatives of its forward (checks the formulas).
#[test]
fn reference_exact_gradients_match_finite_differences() {
    let d = Dims { tokens: 4, input: 6, output: 5, rank: 2 };
    let keep: Vec<bool> = (0..30).map(|k| (k * 7) % 3 != 0).collect();
    let (x, w) = (random_f64(24, 1.0, 1), random_f64(30, 1.0, 2));
    let (a, b, dy) = (random_f64(12, 1.0, 3), random_f64(10, 1.0, 4), random_f64(20, 1.0, 5));
    let s = 1.7;
    let (dx, da, db) = cpu::backward(&x, &w, &keep, &a, &b, &dy, s, d, AdapterGrad::Exact);
    let fd_x = finite_diff(|x| cpu::forward(x, &w, &keep, &a, &b, s, d), &x, &dy, 1e-6);
    let fd_a = finite_diff(|a| cpu::forward(&x, &w, &keep, a, &b, s, d), &a, &dy, 1e-6);
    let fd_b = finite_diff(|b| cpu::forward(&x, &w, &keep, &a, b, s, d), &b, &dy, 1e-6);
    assert_close_f64("dx", &dx, &fd_x, 1e-8, 1e-6);
    assert_close_f64("dA", &da, &fd_a, 1e-8, 1e-6);
    assert_close_f64("dB", &db, &fd_b, 1e-8, 1e-6);
    // Rearranged equals exact when nothing is masked, differs otherwise.
    let all = vec![true; 30];
    let e = cpu::backward(&x, &w, &all, &a, &b, &dy, s, d, AdapterGrad::Exact);
    let r = cpu::backward(&x, &w, &all, &a, &b, &dy, s, d, AdapterGrad::Rearranged);
    assert_close_f64("dense: dA rearranged", &r.1, &e.1, 1e-12, 1e-10);
    assert_close_f64("dense: dB rearranged", &r.2, &e.2, 1e-12, 1e-10);
    let r = cpu::backward(&x, &w, &keep, &a, &b, &dy, s, d, AdapterGrad::Rearranged);
    assert!(r.1.iter().zip(&da).any(|(p, q)| (p - q).abs() > 1e-6), "the masked exact dA differs from LoRS's");
}

struct Case {
    x: Tensor,
    w: SparseWeight,
    w_dense: Vec<f32>,
    keep: Vec<bool>,
    a: Tensor,
    b: Tensor,
    dy: Tensor,
    d: Dims,
}

#[allow(clippy::too_many_arguments)]
fn case(
    dev: &Device,
    dtype: DType,
    lead: &[usize],
    input: usize,
    output: usize,
    rank: usize,
    format: SparseFormat,
    seed: u64,
) -> Case {
    let c = sparse_case(dev, dtype, lead, input, output, format, seed);
    Case {
        keep: keep_of(&c.mask),
        a: random_tensor(vec![rank, input], dtype, dev, seed + 3),
        b: random_tensor(vec![output, rank], dtype, dev, seed + 4),
        d: Dims { tokens: c.tokens, input, output, rank },
        x: c.x,
        w: c.w,
        w_dense: c.w_dense,
        dy: c.dy,
    }
}

#[test]
fn cpu_path_matches_the_dense_reference() {
    let dev = Device::cpu();
    for (lead, input, output, rank, format) in [
        (vec![1, 7], 37, 29, 3, SparseFormat::Bitmask),
        (vec![2, 5], 64, 33, 8, SparseFormat::NM { n: 2, m: 4 }),
        (vec![3, 1], 16, 80, 1, SparseFormat::Bitmask),
    ] {
        let c = case(&dev, DType::F32, &lead, input, output, rank, format, 9);
        let (x, a, b, dy) = (f64s(&c.x), f64s(&c.a), f64s(&c.b), f64s(&c.dy));
        let w: Vec<f64> = c.w_dense.iter().map(|&v| v as f64).collect();
        let s = 2.0;
        let what = format!("{input}->{output} r{rank} {format:?}");
        let y = forward(&c.x, &c.w, &c.a, &c.b, s as f32).unwrap();
        assert_eq!(y.dims()[..lead.len()], lead[..]);
        assert_close_f64(&format!("{what} y"), &f64s(&y), &cpu::forward(&x, &w, &c.keep, &a, &b, s, c.d), 1e-5, 1e-5);
        for mode in [AdapterGrad::Exact, AdapterGrad::Rearranged] {
            let (rdx, rda, rdb) = cpu::backward(&x, &w, &c.keep, &a, &b, &dy, s, c.d, mode);
            let (dx, da, db) = backward(&c.x, &c.w, &c.a, &c.b, &c.dy, s as f32, mode, true, true).unwrap();
            assert_close_f64(&format!("{what} {mode:?} dx"), &f64s(&dx.unwrap()), &rdx, 1e-5, 1e-5);
            assert_close_f64(&format!("{what} {mode:?} dA"), &f64s(&da.unwrap()), &rda, 1e-4, 1e-5);
            assert_close_f64(&format!("{what} {mode:?} dB"), &f64s(&db.unwrap()), &rdb, 1e-4, 1e-5);
        }
    }
}

#[test]
fn tape_keeps_no_out_by_in_tensor_and_reuses_the_workspace() {
    let dev = Device::cpu();
    let c = case(&dev, DType::F32, &[2, 9], 48, 40, 4, SparseFormat::Bitmask, 3);
    let mut tape = Tape::new();
    tape.watch(&c.a);
    tape.watch(&c.b);
    let y = masked_lora(Some(&mut tape), &c.x, &c.w, &c.a, &c.b, 2.0, AdapterGrad::Exact).unwrap();
    let report = tape.saved_report();
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].recomputed, vec![RECOMPUTED]);
    for (shape, _) in &report[0].kept {
        assert_ne!(shape.elem_count(), 40 * 48, "an out × in tensor is kept: {shape}");
    }
    let Device::Cpu(cpu) = &dev else { unreachable!() };
    let ws = cpu.workspace_bytes();
    assert_eq!(ws, 40 * 48 * 4, "one workspace of the linear's size");
    let before = dev.memory().current_bytes;
    let mut grads = Grads::new();
    tape.backward_from(&y, c.dy.clone(), &mut grads).unwrap();
    assert_eq!(cpu.workspace_bytes(), ws, "backward reuses the workspace");
    let (_, da, db) = backward(&c.x, &c.w, &c.a, &c.b, &c.dy, 2.0, AdapterGrad::Exact, false, true).unwrap();
    assert_eq!(grads.get(&c.a).unwrap().to_f32_vec().unwrap(), da.unwrap().to_f32_vec().unwrap());
    assert_eq!(grads.get(&c.b).unwrap().to_f32_vec().unwrap(), db.unwrap().to_f32_vec().unwrap());
    assert!(grads.get(&c.x).is_none());
    // After the op only the gradients remain beyond what existed before backward.
    assert!(dev.memory().current_bytes <= before + (4 * 48 + 40 * 4) * 4 * 2);
}

/// A backward right after its forward multiplies by the W_eff the forward left in the
/// workspace; after A or the base is written in place, or another op used the workspace, it
/// rebuilds it. Every dx, dA and dB against the dense reference on the inputs of the moment.
fn weff_reuse_follows_the_inputs(dev: &Device) {
    let mut c = case(dev, DType::F32, &[2, 5], 40, 24, 3, SparseFormat::Bitmask, 21);
    let s = 1.5f32;
    let check = |c: &Case, w_dense: &[f32], what: &str| {
        let w: Vec<f64> = w_dense.iter().map(|&v| v as f64).collect();
        let r = cpu::backward(
            &f64s(&c.x),
            &w,
            &c.keep,
            &f64s(&c.a),
            &f64s(&c.b),
            &f64s(&c.dy),
            s as f64,
            c.d,
            AdapterGrad::Exact,
        );
        let (dx, da, db) = backward(&c.x, &c.w, &c.a, &c.b, &c.dy, s, AdapterGrad::Exact, true, true).unwrap();
        assert_close_f64(&format!("{what}: dx"), &f64s(&dx.unwrap()), &r.0, 1e-5, 1e-5);
        assert_close_f64(&format!("{what}: dA"), &f64s(&da.unwrap()), &r.1, 1e-4, 1e-5);
        assert_close_f64(&format!("{what}: dB"), &f64s(&db.unwrap()), &r.2, 1e-4, 1e-5);
    };
    let start = dev.workspace_reuses();
    forward(&c.x, &c.w, &c.a, &c.b, s).unwrap();
    check(&c, &c.w_dense, "right after the forward");
    assert_eq!(dev.workspace_reuses(), start + 1, "the forward's W_eff was reused");
    check(&c, &c.w_dense, "a second backward (the adapter gradients overwrote the workspace)");
    assert_eq!(dev.workspace_reuses(), start + 1);

    forward(&c.x, &c.w, &c.a, &c.b, s).unwrap();
    let a2 = random_tensor(c.a.dims().to_vec(), DType::F32, dev, 77);
    c.a.copy_from(&a2).unwrap();
    check(&c, &c.w_dense, "A written in place after the forward");

    forward(&c.x, &c.w, &c.a, &c.b, s).unwrap();
    let doubled: Vec<f32> = c.w.values().to_f32_vec().unwrap().iter().map(|v| 2.0 * v).collect();
    let values = Tensor::from_f32(doubled, c.w.values().shape().clone(), DType::F32, dev).unwrap();
    c.w.values().copy_from(&values).unwrap();
    c.w_dense.iter_mut().for_each(|v| *v *= 2.0);
    check(&c, &c.w_dense, "the base's values written in place after the forward");

    forward(&c.x, &c.w, &c.a, &c.b, s).unwrap();
    let other = case(dev, DType::F32, &[3], 40, 24, 3, SparseFormat::Bitmask, 22);
    forward(&other.x, &other.w, &other.a, &other.b, s).unwrap();
    check(&c, &c.w_dense, "another linear's forward in between");
    assert_eq!(dev.workspace_reuses(), start + 1, "only the first backward reused");
}

#[test]
fn backward_reuses_the_forwards_weight_only_while_its_inputs_are_unchanged() {
    weff_reuse_follows_the_inputs(&Device::cpu());
}

#[test]
fn cuda_backward_reuses_the_forwards_weight_only_while_its_inputs_are_unchanged() {
    if let Some(gpu) = cuda_for_tests("cuda_backward_reuses_the_forwards_weight_only_while_its_inputs_are_unchanged") {
        weff_reuse_follows_the_inputs(&gpu);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::cpu();
    let c = case(&dev, DType::F32, &[3], 16, 8, 2, SparseFormat::Bitmask, 1);
    let wrong_a = Tensor::zeros([2, 15], DType::F32, &dev).unwrap();
    assert!(forward(&c.x, &c.w, &wrong_a, &c.b, 1.0).unwrap_err().to_string().contains("[2, 15]"));
    let wrong_x = Tensor::zeros([3, 17], DType::F32, &dev).unwrap();
    assert!(forward(&wrong_x, &c.w, &c.a, &c.b, 1.0).is_err());
    let b16 = case(&dev, DType::BF16, &[3], 16, 8, 2, SparseFormat::Bitmask, 1);
    assert!(forward(&b16.x, &b16.w, &b16.a, &b16.b, 1.0).unwrap_err().to_string().contains("f32"));
}

#[test]
fn cuda_matches_cpu() {
    let Some(gpu) = cuda_for_tests("masked_lora::cuda_matches_cpu") else { return };
    let cpu = Device::cpu();
    for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-4), (DType::BF16, 5e-2, 3e-2)] {
        for (lead, input, output, rank, format) in [
            (vec![1, 7], 37, 29, 3, SparseFormat::Bitmask),
            (vec![2, 65], 576, 192, 16, SparseFormat::Bitmask),
            (vec![3, 33], 256, 100, 8, SparseFormat::NM { n: 2, m: 4 }),
            (vec![1, 130], 1536, 576, 16, SparseFormat::NM { n: 4, m: 8 }),
        ] {
            // Reference in f32 on the CPU from the same (dtype-rounded) values.
            let c = case(&cpu, dtype, &lead, input, output, rank, format, 17);
            let to32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let w32 = c.w.to_dtype(DType::F32).unwrap();
            let (x, a, b, dy) = (to32(&c.x), to32(&c.a), to32(&c.b), to32(&c.dy));
            let g = |t: &Tensor| t.to_device(&gpu).unwrap();
            let wg = c.w.to_device(&gpu).unwrap();
            let what = format!("{dtype} {input}->{output} r{rank} {format:?}");
            let tol = (input as f64).sqrt();
            let y = forward(&x, &w32, &a, &b, 2.0).unwrap().to_f32_vec().unwrap();
            let yg = forward(&g(&c.x), &wg, &g(&c.a), &g(&c.b), 2.0).unwrap().to_f32_vec().unwrap();
            assert_close(&format!("{what} y"), &yg, &y, atol * tol, rtol);
            for mode in [AdapterGrad::Exact, AdapterGrad::Rearranged] {
                let (dx, da, db) = backward(&x, &w32, &a, &b, &dy, 2.0, mode, true, true).unwrap();
                let (gx, ga, gb) =
                    backward(&g(&c.x), &wg, &g(&c.a), &g(&c.b), &g(&c.dy), 2.0, mode, true, true).unwrap();
                let tol_t = (c.d.tokens as f64).sqrt();
                assert_close(
                    &format!("{what} {mode:?} dx"),
                    &gx.unwrap().to_f32_vec().unwrap(),
                    &dx.unwrap().to_f32_vec().unwrap(),
                    atol * (output as f64).sqrt(),
                    rtol,
                );
                assert_close(
                    &format!("{what} {mode:?} dA"),
                    &ga.unwrap().to_f32_vec().unwrap(),
                    &da.unwrap().to_f32_vec().unwrap(),
                    atol * tol_t * tol,
                    rtol,
                );
                assert_close(
                    &format!("{what} {mode:?} dB"),
                    &gb.unwrap().to_f32_vec().unwrap(),
                    &db.unwrap().to_f32_vec().unwrap(),
                    atol * tol_t * tol,
                    rtol,
                );
            }
        }
    }
}

/// dA and dB (as f32) from [`cuda::backward_exact`] in tiles of `tile` columns on CUDA tensors.
#[allow(clippy::too_many_arguments)]
fn adapter_grads_in_tiles<T: crate::device::cuda::CudaFloat>(
    c: &Case,
    gpu: &Device,
    w: &SparseWeight,
    tile: usize,
    with_dx: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let Device::Cuda(dev) = gpu else { unreachable!() };
    let g = |t: &Tensor| t.to_device(gpu);
    let (x, a, b, dy) = (g(&c.x)?, g(&c.a)?, g(&c.b)?, g(&c.dy)?);
    let d = c.d;
    let mut dx = dev.alloc::<T>(d.tokens * d.input)?;
    let (mut ga, mut gb) = (dev.alloc::<T>(d.rank * d.input)?, dev.alloc::<T>(d.output * d.rank)?);
    let (xr, ar, br, dyr) = (x.read()?, a.read()?, b.read()?, dy.read()?);
    cuda::backward_exact::<T>(
        dev,
        xr.cuda()?,
        w,
        ar.cuda()?,
        br.cuda()?,
        dyr.cuda()?,
        2.0,
        with_dx.then_some(dx.slice_mut()),
        Some((ga.slice_mut(), gb.slice_mut())),
        d,
        Some(tile),
        None,
    )?;
    Ok((
        crate::tensor::cuda_tensor(ga, c.a.shape().clone(), gpu)?.to_f32_vec()?,
        crate::tensor::cuda_tensor(gb, c.b.shape().clone(), gpu)?.to_f32_vec()?,
    ))
}

/// The exact adapter gradients taken in tiles of 8 and 16 columns (the last one narrower)
/// match the CPU reference, with dx and without it (the workspace then holds one tile).
#[test]
fn cuda_adapter_gradients_in_tiles_match_cpu() {
    let Some(gpu) = cuda_for_tests("masked_lora::cuda_adapter_gradients_in_tiles_match_cpu") else { return };
    let cpu = Device::cpu();
    for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-4), (DType::BF16, 5e-2, 3e-2)] {
        for (input, output, rank, format) in [
            (37, 29, 3, SparseFormat::Bitmask),
            (44, 24, 4, SparseFormat::NM { n: 2, m: 4 }),
            (48, 17, 2, SparseFormat::NM { n: 4, m: 8 }),
        ] {
            let c = case(&cpu, dtype, &[2, 5], input, output, rank, format, 23);
            let to32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let w32 = c.w.to_dtype(DType::F32).unwrap();
            let (_, da, db) = backward(
                &to32(&c.x),
                &w32,
                &to32(&c.a),
                &to32(&c.b),
                &to32(&c.dy),
                2.0,
                AdapterGrad::Exact,
                false,
                true,
            )
            .unwrap();
            let (da, db) = (da.unwrap().to_f32_vec().unwrap(), db.unwrap().to_f32_vec().unwrap());
            let w = c.w.to_device(&gpu).unwrap();
            let tol = atol * ((c.d.tokens * input) as f64).sqrt();
            for (tile, with_dx) in [(8, true), (16, false), (input, false)] {
                let what = format!("{dtype} {input}->{output} r{rank} {format:?} tiles of {tile}, dx {with_dx}");
                let (ga, gb) =
                    with_compute_type!(dtype, "test", T => adapter_grads_in_tiles::<T>(&c, &gpu, &w, tile, with_dx))
                        .unwrap();
                assert_close(&format!("{what} dA"), &ga, &da, tol, rtol);
                assert_close(&format!("{what} dB"), &gb, &db, tol, rtol);
            }
            // A tile that is not a multiple of 8 (and not every column) is refused.
            let err = with_compute_type!(dtype, "test", T => adapter_grads_in_tiles::<T>(&c, &gpu, &w, 12, false));
            assert!(err.unwrap_err().to_string().contains("tile of 12"));
        }
    }
}

#[test]
fn adapter_tiles_hold_about_the_budget() {
    // 4096 × 4096 bf16: 1024 columns of 8 KiB rows make 8 MiB.
    assert_eq!(cuda::adapter_tile_cols(4096, 4096, 2), 1024);
    assert_eq!(cuda::adapter_tile_cols(11008, 4096, 2) % 8, 0);
    assert!(cuda::adapter_tile_cols(11008, 4096, 2) * 11008 * 2 <= cuda::ADAPTER_TILE_BYTES);
    // Small weights take every column in one tile, huge rows at least a mask byte.
    assert_eq!(cuda::adapter_tile_cols(29, 37, 4), 37);
    assert_eq!(cuda::adapter_tile_cols(1 << 30, 64, 4), 8);
}

/// `t` on `dev`; on the CPU as f32, the CPU path's only dtype (the same dtype-rounded values).
fn on_device(t: &Tensor, dev: &Device) -> Tensor {
    let t = t.to_device(dev).unwrap();
    if dev.is_cuda() {
        t
    } else {
        t.to_dtype(DType::F32).unwrap()
    }
}

/// A masked-LoRA linear on `dev`, as [`on_device`] moves tensors.
fn linear_on(p: &MaskedLora, dev: &Device) -> MaskedLora {
    let base = if dev.is_cuda() { p.base.to_device(dev) } else { p.base.to_dtype(DType::F32) };
    MaskedLora { base: base.unwrap(), a: on_device(&p.a, dev), b: on_device(&p.b, dev), scale: p.scale, grad: p.grad }
}

/// The gate|up pair as one op on CUDA (one node on the tape) against the separate ops on
/// the CPU (three nodes): m and every gradient, for both adapter-gradient modes, bitmask and
/// 2:4 bases, f32 and bf16; nothing of size out × in is kept.
#[test]
fn cuda_swiglu_pair_matches_the_separate_ops() {
    let Some(gpu) = cuda_for_tests("masked_lora::cuda_swiglu_pair_matches_the_separate_ops") else { return };
    let cpu = Device::cpu();
    for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-4), (DType::BF16, 5e-2, 3e-2)] {
        for (input, output, rank, formats, mode) in [
            (37, 29, 3, [SparseFormat::Bitmask, SparseFormat::Bitmask], AdapterGrad::Exact),
            (64, 40, 4, [SparseFormat::NM { n: 2, m: 4 }, SparseFormat::Bitmask], AdapterGrad::Rearranged),
        ] {
            let what = format!("{dtype} {input}->{output} r{rank} {formats:?} {mode:?}");
            let g = case(&cpu, dtype, &[2, 5], input, output, rank, formats[0], 31);
            let u = case(&cpu, dtype, &[2, 5], input, output, rank, formats[1], 37);
            let part =
                |c: &Case, scale| MaskedLora { base: c.w.clone(), a: c.a.clone(), b: c.b.clone(), scale, grad: mode };
            let (gate, up) = (part(&g, 2.0), part(&u, 0.5));
            let run = |dev: &Device| {
                let (on, lin) = (|t: &Tensor| on_device(t, dev), |p: &MaskedLora| linear_on(p, dev));
                let (x, gate, up) = (on(&g.x), lin(&gate), lin(&up));
                let mut tape = Tape::new();
                for t in [&x, &gate.a, &gate.b, &up.a, &up.b] {
                    tape.watch(t);
                }
                let m = masked_lora_swiglu(Some(&mut tape), &x, &gate, &up).unwrap();
                let nodes = tape.len();
                for entry in tape.saved_report() {
                    for (shape, _) in &entry.kept {
                        assert_ne!(shape.elem_count(), output * input, "{what}: an out × in tensor is kept");
                    }
                }
                let mut grads = Grads::new();
                tape.backward_from(&m, on(&g.dy), &mut grads).unwrap();
                let got: Vec<Vec<f32>> = [&x, &gate.a, &gate.b, &up.a, &up.b]
                    .iter()
                    .map(|t| grads.get(t).unwrap().to_f32_vec().unwrap())
                    .collect();
                (m.to_f32_vec().unwrap(), got, nodes)
            };
            let (m_cpu, grads_cpu, nodes_cpu) = run(&cpu);
            let (m_gpu, grads_gpu, nodes_gpu) = run(&gpu);
            assert_eq!((nodes_cpu, nodes_gpu), (3, 1), "{what}: separate ops on the CPU, one op on CUDA");
            let tol = atol * (input as f64).sqrt();
            assert_close(&format!("{what} m"), &m_gpu, &m_cpu, tol, rtol);
            let tol = tol * ((g.d.tokens * output) as f64).sqrt();
            for (name, (got, want)) in
                ["dx", "dA gate", "dB gate", "dA up", "dB up"].iter().zip(grads_gpu.iter().zip(&grads_cpu))
            {
                assert_close(&format!("{what} {name}"), got, want, tol, rtol);
            }
        }
    }
}

/// q|k|v with RoPE as one op on CUDA (one node, three outputs) against the separate ops on
/// the CPU (eight nodes): the outputs and every gradient, through attention (all three
/// outputs read) and from q alone (k and v without a gradient); GQA and MHA heads, both
/// adapter-gradient modes, bitmask and 2:4, f32 and bf16; nothing of size out × in is kept.
#[test]
fn cuda_qkv_rope_matches_the_separate_ops() {
    let Some(gpu) = cuda_for_tests("masked_lora::cuda_qkv_rope_matches_the_separate_ops") else { return };
    let cpu = Device::cpu();
    let inv_freq = crate::ops::rope::cpu::inv_freq(10_000.0, 6);
    for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-4), (DType::BF16, 5e-2, 3e-2)] {
        for (input, heads, format, mode) in [
            (37, Heads { q: 4, kv: 2, dim: 6 }, SparseFormat::Bitmask, AdapterGrad::Exact),
            (40, Heads { q: 3, kv: 3, dim: 6 }, SparseFormat::NM { n: 2, m: 4 }, AdapterGrad::Rearranged),
        ] {
            let what = format!("{dtype} in {input} {heads:?} {format:?} {mode:?}");
            let outs = [heads.q, heads.kv, heads.kv].map(|h| h * heads.dim);
            let cases: Vec<Case> = outs
                .iter()
                .enumerate()
                .map(|(i, &o)| case(&cpu, dtype, &[2, 5], input, o, 3, format, 41 + i as u64))
                .collect();
            let part =
                |c: &Case, scale| MaskedLora { base: c.w.clone(), a: c.a.clone(), b: c.b.clone(), scale, grad: mode };
            let linears = [part(&cases[0], 2.0), part(&cases[1], 0.5), part(&cases[2], 1.5)];
            let dq = random_tensor(vec![2, 5, heads.q, heads.dim], dtype, &cpu, 50);
            let run = |dev: &Device, through_attention: bool| {
                let (on, lin) = (|t: &Tensor| on_device(t, dev), |p: &MaskedLora| linear_on(p, dev));
                let x = on(&cases[0].x);
                let ls = [lin(&linears[0]), lin(&linears[1]), lin(&linears[2])];
                let mut tape = Tape::new();
                tape.watch(&x);
                for l in &ls {
                    tape.watch(&l.a);
                    tape.watch(&l.b);
                }
                let [q, k, v] =
                    masked_lora_qkv_rope(Some(&mut tape), &x, [&ls[0], &ls[1], &ls[2]], heads, &inv_freq, 3).unwrap();
                let nodes = tape.len();
                for entry in tape.saved_report() {
                    for (shape, _) in &entry.kept {
                        assert!(
                            outs.iter().all(|o| shape.elem_count() != o * input),
                            "{what}: an out × in tensor is kept"
                        );
                    }
                }
                let mut grads = Grads::new();
                let mut values: Vec<Vec<f32>> = [&q, &k, &v].iter().map(|t| t.to_f32_vec().unwrap()).collect();
                if through_attention {
                    let z = crate::ops::attention::attention(Some(&mut tape), &q, &k, &v).unwrap();
                    let dz = on(&random_tensor(z.dims().to_vec(), dtype, &cpu, 51));
                    values.push(z.to_f32_vec().unwrap());
                    tape.backward_from(&z, dz, &mut grads).unwrap();
                } else {
                    tape.backward_from(&q, on(&dq), &mut grads).unwrap();
                }
                let mut watched = vec![&x];
                for l in &ls {
                    watched.extend([&l.a, &l.b]);
                }
                let got: Vec<Option<Vec<f32>>> =
                    watched.iter().map(|t| grads.get(t).map(|g| g.to_f32_vec().unwrap())).collect();
                (values, got, nodes)
            };
            for through_attention in [true, false] {
                let (values_cpu, grads_cpu, nodes_cpu) = run(&cpu, through_attention);
                let (values_gpu, grads_gpu, nodes_gpu) = run(&gpu, through_attention);
                let what = format!("{what}, through attention {through_attention}");
                assert_eq!((nodes_cpu, nodes_gpu), (8, 1), "{what}: separate ops on the CPU, one op on CUDA");
                let tol = atol * (input as f64).sqrt();
                for (name, (got, want)) in ["q", "k", "v", "attention"].iter().zip(values_gpu.iter().zip(&values_cpu)) {
                    assert_close(&format!("{what} {name}"), got, want, tol, rtol);
                }
                let tol = tol * (10.0 * outs[0] as f64).sqrt();
                let names = ["dx", "dA q", "dB q", "dA k", "dB k", "dA v", "dB v"];
                for (name, (got, want)) in names.iter().zip(grads_gpu.iter().zip(&grads_cpu)) {
                    match (got, want) {
                        (Some(got), Some(want)) => assert_close(&format!("{what} {name}"), got, want, tol, rtol),
                        (None, None) => {
                            assert!(!through_attention && !name.ends_with('q') && *name != "dx", "{what} {name}")
                        }
                        _ => panic!("{what} {name}: a gradient on one device only"),
                    }
                }
            }
        }
    }
}
