//! `cuda/rope.cu` on the CPU: `rope_f32` and `rope_bf16` rotating x [batch, seq, heads,
//! head_dim] for positions pos_offset + t (a null positions pointer; sign +1, the forward, and
//! −1, the backward), and the same tokens [batch·seq, heads, head_dim] at positions of their own
//! (sign +1), against `ops::rope::{forward, backward, forward_at}` on the CPU with its
//! cuda_matches_cpu tolerances (f32 1e-5 + 1e-4·|ref|, bf16 1e-2 + 1e-2·|ref|); and the split
//! of a fused q|k|v row [tokens, (hq + 2·hkv)·head_dim] into rotated q, rotated k and copied v,
//! against `rope::forward` of the row's slices (v bit for bit).

use cuda_cpu::{Buffer, Guard, Null};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::rope::{self, cpu::inv_freq, cuda::geometry};
use sparsetune::testing::{assert_close, random_f32};

use crate::{buffer, i32s, nan_buffer, run, tensor, tolerance, widen};

/// (batch, seq, heads, head_dim, pos_offset, theta): the op test's cases (the last two
/// reach position 8000); half = 129 > 128 threads (the cos/sin fill and the rotation both
/// straddle the block's end); heads·half = 257 (two block strides and one more); the
/// largest head_dim whose cos/sin fit the block's shared memory.
const CASES: [(usize, usize, usize, usize, usize, f32); 8] = [
    (1, 1, 1, 2, 0, 10_000.0),
    (2, 7, 3, 10, 1, 10_000.0),
    (1, 37, 5, 66, 100, 500_000.0),
    (2, 33, 4, 128, 7967, 10_000.0),
    (1, 3, 2, 256, 7997, 500_000.0),
    (1, 2, 1, 258, 3, 10_000.0),
    (2, 3, 257, 2, 5, 10_000.0),
    (1, 2, 1, rope::cuda::MAX_SHARED_BYTES / 4, 11, 10_000.0),
];

/// Runs `rope_*` forward and inverse, and at explicit positions, the way `rope::cuda::rotate`
/// launches it and compares each with the CPU.
fn check<T: CudaFloat>(
    (batch, seq, heads, head_dim, offset, theta): (usize, usize, usize, usize, usize, f32),
    guard: Guard,
) {
    let what = format!("rope {} [{batch}, {seq}, {heads}, {head_dim}] from {offset} theta {theta} {guard:?}", T::DTYPE);
    let (atol, rtol) = tolerance::<T>();
    let (n, tokens) = (batch * seq * heads * head_dim, batch * seq);
    let dims = [batch, seq, heads, head_dim];
    let table = inv_freq(theta, head_dim);
    let table_buf = Buffer::from_slice(&table, guard);
    let launch = geometry(tokens, head_dim).unwrap();
    let [tokens_i, seq_i, heads_i, dim_i, offset_i] = i32s([tokens, seq, heads, head_dim, offset]);
    let [ld_i, one, zero] = i32s([heads * head_dim, 1, 0]);
    for (sign, seed) in [(1f32, 30), (-1f32, 31)] {
        let x = tensor::<T>(random_f32(n, 1.0, seed), &dims);
        let (x_buf, y) = (buffer::<T>(&x, guard), nan_buffer::<T>(n, guard));
        run(
            "rope",
            &format!("rope_{}", T::SUFFIX),
            launch,
            &[
                &x_buf, &ld_i, &table_buf, &y, &heads_i, &Null, &zero, &Null, &zero, &tokens_i, &seq_i, &dim_i,
                &offset_i, &Null, &sign,
            ],
        );
        let (want, name) = if sign > 0.0 {
            (rope::forward(&x, &table, offset), "y")
        } else {
            (rope::backward(&x, &table, offset), "dx")
        };
        assert_close(&format!("{what} {name}"), &widen(&y), &want.unwrap().to_f32_vec().unwrap(), atol, rtol);
    }

    // Every token at its own position, out of order, up to 8000; seq and pos_offset unused.
    let positions: Vec<u32> = (0..tokens).map(|t| ((offset + 4099 * t) % 8001) as u32).collect();
    let x = tensor::<T>(random_f32(n, 1.0, 32), &[tokens, heads, head_dim]);
    let (x_buf, y) = (buffer::<T>(&x, guard), nan_buffer::<T>(n, guard));
    run(
        "rope",
        &format!("rope_{}", T::SUFFIX),
        launch,
        &[
            &x_buf,
            &ld_i,
            &table_buf,
            &y,
            &heads_i,
            &Null,
            &zero,
            &Null,
            &zero,
            &tokens_i,
            &one,
            &dim_i,
            &zero,
            &Buffer::from_slice(&positions, guard),
            &1f32,
        ],
    );
    let want = rope::forward_at(&x, &table, &positions).unwrap().to_f32_vec().unwrap();
    assert_close(&format!("{what} at positions"), &widen(&y), &want, atol, rtol);

    // A fused q|k|v row: `heads` query heads, then key and value heads of ⌈heads/2⌉ each.
    let hkv = heads.div_ceil(2);
    let width = (heads + 2 * hkv) * head_dim;
    let rows: Vec<f32> = random_f32(tokens * width, 1.0, 33);
    let x = tensor::<T>(rows, &[tokens, width]);
    let x = x.to_f32_vec().unwrap();
    let part = |from: usize, h: usize| -> Vec<f32> {
        (0..tokens).flat_map(|t| x[t * width + from..t * width + from + h * head_dim].to_vec()).collect()
    };
    let (q, k, v) = (part(0, heads), part(heads * head_dim, hkv), part((heads + hkv) * head_dim, hkv));
    let outs = [
        nan_buffer::<T>(tokens * heads * head_dim, guard),
        nan_buffer::<T>(tokens * hkv * head_dim, guard),
        nan_buffer::<T>(tokens * hkv * head_dim, guard),
    ];
    let [width_i, hkv_i] = i32s([width, hkv]);
    let x_buf = buffer::<T>(&tensor::<T>(x.clone(), &[tokens, width]), guard);
    run(
        "rope",
        &format!("rope_{}", T::SUFFIX),
        launch,
        &[
            &x_buf, &width_i, &table_buf, &outs[0], &heads_i, &outs[1], &hkv_i, &outs[2], &hkv_i, &tokens_i, &seq_i,
            &dim_i, &offset_i, &Null, &1f32,
        ],
    );
    let rotated = |p: Vec<f32>, h: usize| {
        rope::forward(&tensor::<T>(p, &[batch, seq, h, head_dim]), &table, offset).unwrap().to_f32_vec().unwrap()
    };
    assert_close(&format!("{what} split q"), &widen(&outs[0]), &rotated(q, heads), atol, rtol);
    assert_close(&format!("{what} split k"), &widen(&outs[1]), &rotated(k, hkv), atol, rtol);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&widen(&outs[2])), bits(&v), "{what} split v");
}

f32_and_bf16_tests!(CASES[0], CASES);

/// A head_dim whose cos/sin exceed the block's shared memory is refused before launching.
#[test]
fn head_dim_beyond_shared_memory_is_an_error() {
    let largest = rope::cuda::MAX_SHARED_BYTES / 4;
    assert_eq!(geometry(3, largest).unwrap().shared_bytes as usize, rope::cuda::MAX_SHARED_BYTES);
    assert!(geometry(3, largest + 2).is_err());
}
