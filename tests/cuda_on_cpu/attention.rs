//! `cuda/attention.cu` on the CPU: causal GQA attention over q [B, T, Hq, D], k, v
//! [B, T, Hkv, D], f32 and bf16. `attention_fwd_d{64,128}_*` (o like q, lse [B, Hq, T] f32)
//! against `ops::attention::cpu::forward`; then, from the reference's o and lse as the op test
//! does (so each comparison checks one kernel), `attention_bwd_delta_*` (delta = do·o, [B, Hq,
//! T] f32) against its definition, and `attention_bwd_dq_d*_*` and `attention_bwd_dkdv_d*_*`
//! (fed the kernel's delta, as the launcher does) against `ops::attention::cpu::backward`,
//! dkdv also with a null dk and with a null dv (the launcher's "not wanted"). Tolerances of
//! attention's cuda_matches_cpu: f32 1e-5 + 1e-4·|ref|, bf16 2e-2 + 2e-2·|ref|, lse and delta
//! 1e-5 + 1e-4·|ref|.
//!
//! The tensor-core path (`ops::attention::cuda_gemm`) on the same cases: its GEMMs, as
//! `Strided` products from its `Chunk`s, run on the host (`Strided::reference` on the values
//! the GPU would read, rounding outputs of type T as cuBLAS would), and its row kernels
//! `attention_probs_*` (computing lse, then recomputing p from it) and `attention_dscores_*`
//! run from source; o, lse, dq, dk, dv against the same reference and tolerances, with all kv
//! heads in one chunk and with one head per chunk.

use cuda_cpu::{Arg, Buffer, Guard, Null};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::attention::cpu::{self, Dims};
use sparsetune::ops::attention::cuda::{delta_geometry, dkdv_geometry, dq_geometry, forward_geometry, plan};
use sparsetune::ops::attention::cuda_gemm::{chunks, heads_per_chunk, row_geometry};
use sparsetune::testing::{assert_close, random_f32};
use sparsetune::{DType, Tensor};

use crate::{buffer, i32s, nan_buffer, run, tensor, widen};

/// (B, T, Hq, Hkv, D).
type Case = (usize, usize, usize, usize, usize);

/// The op test's cases that run in seconds here (T in {1, 7, 33}, D in {3, 64, 100, 128},
/// Hq/Hkv in {1/1, 4/2, 9/3}, B in {1, 2}), its T = 129 case with 2 query heads over 1 kv
/// head instead of 9 over 3 (five query tiles: four off the diagonal, the last holding one
/// row), then edges: T = 97 (four tiles, the last one row) at D = 128; the 32-row tile
/// exactly, one row short of it, and two tiles and one more; D = 1 and 65 (the smallest head
/// of each width) and D = 63 (a partial float4 column at the end of the d64 tile); 8 delta
/// rows (one full 256-thread block of 8 warps), 9 (one more), and 1 (a partial block).
/// Every kernel costs about B·Hq·⌈T/32⌉² here (each warp shuffle is a fiber rendezvous):
/// the op test's larger cases are [`LARGE_CASES`].
const CASES: [Case; 15] = [
    (1, 1, 1, 1, 3),
    (2, 7, 4, 2, 64),
    (1, 33, 9, 3, 100),
    (2, 33, 1, 1, 128),
    (1, 7, 9, 3, 100),
    (1, 129, 2, 1, 3),
    (1, 97, 2, 2, 128),
    (1, 32, 2, 1, 64),
    (1, 31, 1, 1, 65),
    (1, 65, 2, 1, 63),
    (1, 32, 4, 4, 1),
    (1, 1, 1, 1, 65),
    (1, 8, 1, 1, 128),
    (1, 9, 1, 1, 5),
    (1, 1, 4, 2, 128),
];

/// The rest of the op test's cases, minutes each here: run with `--ignored`.
const LARGE_CASES: [Case; 5] =
    [(2, 129, 4, 2, 128), (1, 300, 9, 3, 64), (2, 300, 1, 1, 128), (1, 129, 9, 3, 3), (1, 600, 4, 2, 64)];

/// The tolerance (atol, rtol) of attention's cuda_matches_cpu for outputs of type `T`.
fn tolerance<T: CudaFloat>() -> (f64, f64) {
    if T::DTYPE == DType::F32 {
        (1e-5, 1e-4)
    } else {
        (2e-2, 2e-2)
    }
}

/// The tolerance of attention's cuda_matches_cpu for lse (and here delta), f32 whatever T.
const F32_STATS: (f64, f64) = (1e-5, 1e-4);

/// A tensor of `T` from `values` (rounded as T rounds) and its values after rounding.
fn rounded<T: CudaFloat>(values: Vec<f32>, dims: &[usize]) -> (Tensor, Vec<f32>) {
    let t = tensor::<T>(values, dims);
    let values = t.to_f32_vec().unwrap();
    (t, values)
}

/// A random tensor of `T` as the op test draws it, and its values.
fn input<T: CudaFloat>(len: usize, scale: f32, seed: u64, dims: &[usize]) -> (Tensor, Vec<f32>) {
    rounded::<T>(random_f32(len, scale, seed), dims)
}

/// delta[b, h, t] = do[b, t, h, :]·o[b, t, h, :], summed in f64.
fn delta_reference(o: &[f32], d_o: &[f32], d: Dims) -> Vec<f32> {
    let mut delta = vec![0f32; d.lse_len()];
    for (row, (o_row, do_row)) in o.chunks_exact(d.head_dim).zip(d_o.chunks_exact(d.head_dim)).enumerate() {
        let (h, t, b) = (row % d.q_heads, row / d.q_heads % d.seq, row / (d.q_heads * d.seq));
        let dot: f64 = o_row.iter().zip(do_row).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
        delta[(b * d.q_heads + h) * d.seq + t] = dot as f32;
    }
    delta
}

/// Both CUDA paths on one case.
fn check<T: CudaFloat>(case: Case, guard: Guard) {
    check_flash::<T>(case, guard);
    check_tensor_cores::<T>(case, guard);
}

/// Values as a tensor of `T` would hold them (rounded), as f32.
fn round_to<T: CudaFloat>(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&x| T::to_f32(T::from_f32(x))).collect()
}

/// The tensor-core path as `attention::cuda_gemm::{forward, backward}` run it (GEMMs on the
/// host), with `per` kv heads per chunk, against the CPU reference.
fn check_tensor_cores<T: CudaFloat>((batch, seq, q_heads, kv_heads, head_dim): Case, guard: Guard) {
    let d = Dims { batch, seq, q_heads, kv_heads, head_dim };
    let (atol, rtol) = tolerance::<T>();
    let (q_dims, kv_dims) = ([batch, seq, q_heads, head_dim], [batch, seq, kv_heads, head_dim]);
    let (_, q_f) = input::<T>(d.q_len(), 2.0, 100, &q_dims);
    let (_, k_f) = input::<T>(d.kv_len(), 2.0, 101, &kv_dims);
    let (_, v_f) = input::<T>(d.kv_len(), 1.0, 102, &kv_dims);
    let (_, do_f) = input::<T>(d.q_len(), 1.0, 103, &q_dims);
    let (mut o_ref, mut lse_ref) = (vec![0f32; d.q_len()], vec![0f32; d.lse_len()]);
    cpu::forward(&q_f, &k_f, &v_f, d, &mut o_ref, &mut lse_ref);
    let o_f = round_to::<T>(&o_ref);
    let (mut dq_ref, mut dk_ref, mut dv_ref) = (vec![0f32; d.q_len()], vec![0f32; d.kv_len()], vec![0f32; d.kv_len()]);
    let grads = (Some(&mut dq_ref[..]), Some(&mut dk_ref[..]), Some(&mut dv_ref[..]));
    cpu::backward(&q_f, &k_f, &v_f, &o_f, &lse_ref, &do_f, d, grads.0, grads.1, grads.2);
    let delta = Buffer::from_slice(&delta_reference(&o_f, &do_f, d), guard);
    let lse_in = Buffer::from_slice(&lse_ref, guard);

    let all = heads_per_chunk(d, std::mem::size_of::<T>());
    assert_eq!(all, kv_heads, "the test's cases fit one chunk");
    for per in [all, 1] {
        let what = format!(
            "attention (tensor cores, {per} kv heads a chunk) {} B={batch} T={seq} Hq={q_heads} Hkv={kv_heads} D={head_dim} {guard:?}",
            T::DTYPE
        );
        let tt = per * seq * seq;
        let row_kernel = |name: &str, chunk_heads: usize, args: &[&dyn Arg]| {
            run("attention", &format!("attention_{name}_{}", T::SUFFIX), row_geometry(d, chunk_heads).unwrap(), args)
        };
        // Forward.
        let mut o = vec![f32::NAN; d.q_len()];
        let lse = Buffer::filled(d.lse_len(), f32::NAN, guard);
        for chunk in chunks(d, per) {
            let mut s = vec![f32::NAN; tt];
            chunk.scores(d).reference(&q_f, &k_f, &mut s);
            let (s, p) = (Buffer::from_slice(&s, guard), nan_buffer::<T>(tt, guard));
            let [a0, a1, a2, a3] = chunk.row_args(d).unwrap();
            row_kernel("probs", chunk.heads, &[&s, &p, &lse, &a0, &a1, &a2, &a3, &0i32]);
            chunk.output(d).reference(&widen(&p), &v_f, &mut o);
        }
        assert_close(&format!("{what} o"), &round_to::<T>(&o), &o_ref, atol, rtol);
        assert_close(&format!("{what} lse"), &lse.to_vec(), &lse_ref, F32_STATS.0, F32_STATS.1);

        // Backward from the reference's o (for delta) and lse.
        let (mut dq, mut dk, mut dv) =
            (vec![f32::NAN; d.q_len()], vec![f32::NAN; d.kv_len()], vec![f32::NAN; d.kv_len()]);
        for chunk in chunks(d, per) {
            let mut s = vec![f32::NAN; tt];
            chunk.scores(d).reference(&q_f, &k_f, &mut s);
            let (s, p) = (Buffer::from_slice(&s, guard), nan_buffer::<T>(tt, guard));
            let [a0, a1, a2, a3] = chunk.row_args(d).unwrap();
            row_kernel("probs", chunk.heads, &[&s, &p, &lse_in, &a0, &a1, &a2, &a3, &1i32]);
            chunk.d_values(d).reference(&widen(&p), &do_f, &mut dv);
            let mut dp = vec![f32::NAN; tt];
            chunk.d_probs(d).reference(&do_f, &v_f, &mut dp);
            let dp = Buffer::from_slice(&dp, guard);
            row_kernel("dscores", chunk.heads, &[&p, &dp, &delta, &a0, &a1, &a2, &a3]);
            let ds = widen(&p);
            chunk.d_queries(d).reference(&ds, &k_f, &mut dq);
            chunk.d_keys(d).reference(&ds, &q_f, &mut dk);
        }
        assert_close(&format!("{what} dq"), &round_to::<T>(&dq), &dq_ref, atol, rtol);
        assert_close(&format!("{what} dk"), &round_to::<T>(&dk), &dk_ref, atol, rtol);
        assert_close(&format!("{what} dv"), &round_to::<T>(&dv), &dv_ref, atol, rtol);
    }
}

/// Every flash kernel of the case's width the way `attention::cuda::{forward, backward}`
/// launch them, against the CPU reference.
fn check_flash<T: CudaFloat>((batch, seq, q_heads, kv_heads, head_dim): Case, guard: Guard) {
    let d = Dims { batch, seq, q_heads, kv_heads, head_dim };
    let what = format!("attention {} B={batch} T={seq} Hq={q_heads} Hkv={kv_heads} D={head_dim} {guard:?}", T::DTYPE);
    let (atol, rtol) = tolerance::<T>();
    let p = plan(d).unwrap();
    let kernel = |name: &str| format!("attention_{name}_d{}_{}", p.width, T::SUFFIX);
    let (q_dims, kv_dims) = ([batch, seq, q_heads, head_dim], [batch, seq, kv_heads, head_dim]);
    let (q, q_f) = input::<T>(d.q_len(), 2.0, 100, &q_dims);
    let (k, k_f) = input::<T>(d.kv_len(), 2.0, 101, &kv_dims);
    let (v, v_f) = input::<T>(d.kv_len(), 1.0, 102, &kv_dims);
    let (d_o, do_f) = input::<T>(d.q_len(), 1.0, 103, &q_dims);
    let [q_b, k_b, v_b, do_b] = [&q, &k, &v, &d_o].map(|t| buffer::<T>(t, guard));
    let ints = (&p.seq, &p.q_heads, &p.kv_heads, &p.head_dim);

    // Forward.
    let (mut o_ref, mut lse_ref) = (vec![0f32; d.q_len()], vec![0f32; d.lse_len()]);
    cpu::forward(&q_f, &k_f, &v_f, d, &mut o_ref, &mut lse_ref);
    let (o, lse) = (nan_buffer::<T>(d.q_len(), guard), Buffer::filled(d.lse_len(), f32::NAN, guard));
    let args: [&dyn Arg; 10] = [&q_b, &k_b, &v_b, &o, &lse, ints.0, ints.1, ints.2, ints.3, &p.scale_log2];
    run("attention", &kernel("fwd"), forward_geometry(d).unwrap(), &args);
    assert_close(&format!("{what} o"), &widen(&o), &o_ref, atol, rtol);
    assert_close(&format!("{what} lse"), &lse.to_vec(), &lse_ref, F32_STATS.0, F32_STATS.1);

    // Backward from the reference's o (in T) and lse.
    let (o_t, o_f) = rounded::<T>(o_ref, &q_dims);
    let (o_b, lse_b) = (buffer::<T>(&o_t, guard), Buffer::from_slice(&lse_ref, guard));
    let delta = Buffer::filled(d.lse_len(), f32::NAN, guard);
    let batch_i = i32s([batch])[0];
    let args: [&dyn Arg; 7] = [&o_b, &do_b, &delta, &batch_i, ints.0, ints.1, ints.3];
    run("attention", &format!("attention_bwd_delta_{}", T::SUFFIX), delta_geometry(d).unwrap(), &args);
    assert_close(&format!("{what} delta"), &delta.to_vec(), &delta_reference(&o_f, &do_f, d), F32_STATS.0, F32_STATS.1);

    let (mut dq_ref, mut dk_ref, mut dv_ref) = (vec![0f32; d.q_len()], vec![0f32; d.kv_len()], vec![0f32; d.kv_len()]);
    let grads = (Some(&mut dq_ref[..]), Some(&mut dk_ref[..]), Some(&mut dv_ref[..]));
    cpu::backward(&q_f, &k_f, &v_f, &o_f, &lse_ref, &do_f, d, grads.0, grads.1, grads.2);
    let scales = (&p.scale_log2, &p.scale);
    let dq = nan_buffer::<T>(d.q_len(), guard);
    let args: [&dyn Arg; 13] =
        [&q_b, &k_b, &v_b, &do_b, &lse_b, &delta, &dq, ints.0, ints.1, ints.2, ints.3, scales.0, scales.1];
    run("attention", &kernel("bwd_dq"), dq_geometry(d).unwrap(), &args);
    assert_close(&format!("{what} dq"), &widen(&dq), &dq_ref, atol, rtol);

    // dk and dv together, then each alone with a null pointer for the other, into NaN.
    for (want_dk, want_dv) in [(true, true), (true, false), (false, true)] {
        let (dk, dv) = (nan_buffer::<T>(d.kv_len(), guard), nan_buffer::<T>(d.kv_len(), guard));
        let (dk_arg, dv_arg): (&dyn Arg, &dyn Arg) =
            (if want_dk { &dk } else { &Null }, if want_dv { &dv } else { &Null });
        let args: [&dyn Arg; 14] = [
            &q_b, &k_b, &v_b, &do_b, &lse_b, &delta, dk_arg, dv_arg, ints.0, ints.1, ints.2, ints.3, scales.0, scales.1,
        ];
        run("attention", &kernel("bwd_dkdv"), dkdv_geometry(d).unwrap(), &args);
        let run_name = format!("{what} dkdv (dk {want_dk}, dv {want_dv})");
        if want_dk {
            assert_close(&format!("{run_name}: dk"), &widen(&dk), &dk_ref, atol, rtol);
        }
        if want_dv {
            assert_close(&format!("{run_name}: dv"), &widen(&dv), &dv_ref, atol, rtol);
        }
    }
}

// The single token runs the d64 kernels, D = 65 the d128 ones.
f32_and_bf16_tests!([CASES[0], CASES[11]], CASES);

#[test]
#[ignore = "the op test's large cases take minutes on the CPU: run with --ignored"]
fn large_cases_match_cpu() {
    crate::each_case(&LARGE_CASES, check::<f32>);
    crate::each_case(&LARGE_CASES, check::<half::bf16>);
}
