//! `cuda/rope.cu` on the CPU: `rope_f32` and `rope_bf16` rotating x [batch, seq, heads,
//! head_dim] for positions pos_offset + t (a null positions pointer; sign +1, the forward, and
//! −1, the backward), and the same tokens [batch·seq, heads, head_dim] at positions of their own
//! (sign +1), against `ops::rope::{forward, backward, forward_at}` on the CPU with its
//! cuda_matches_cpu tolerances (f32 1e-5 + 1e-4·|ref|, bf16 1e-2 + 1e-2·|ref|).

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
    for (sign, seed) in [(1f32, 30), (-1f32, 31)] {
        let x = tensor::<T>(random_f32(n, 1.0, seed), &dims);
        let (x_buf, y) = (buffer::<T>(&x, guard), nan_buffer::<T>(n, guard));
        run(
            "rope",
            &format!("rope_{}", T::SUFFIX),
            launch,
            &[&x_buf, &table_buf, &y, &tokens_i, &seq_i, &heads_i, &dim_i, &offset_i, &Null, &sign],
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
    let [one, zero] = i32s([1, 0]);
    run(
        "rope",
        &format!("rope_{}", T::SUFFIX),
        launch,
        &[
            &x_buf,
            &table_buf,
            &y,
            &tokens_i,
            &one,
            &heads_i,
            &dim_i,
            &zero,
            &Buffer::from_slice(&positions, guard),
            &1f32,
        ],
    );
    let want = rope::forward_at(&x, &table, &positions).unwrap().to_f32_vec().unwrap();
    assert_close(&format!("{what} at positions"), &widen(&y), &want, atol, rtol);
}

f32_and_bf16_tests!(CASES[0], CASES);

/// A head_dim whose cos/sin exceed the block's shared memory is refused before launching.
#[test]
fn head_dim_beyond_shared_memory_is_an_error() {
    let largest = rope::cuda::MAX_SHARED_BYTES / 4;
    assert_eq!(geometry(3, largest).unwrap().shared_bytes as usize, rope::cuda::MAX_SHARED_BYTES);
    assert!(geometry(3, largest + 2).is_err());
}
