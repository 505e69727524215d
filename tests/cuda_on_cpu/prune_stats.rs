//! `cuda/prune_stats.cu` on the CPU: `stats_partial_*` and `stats_reduce` add the column
//! statistics of x [seqs, seq_len, dim] (f32 or bf16) to sq_norms, sums, seq_var_sum [dim]
//! f64 (Σ x², Σ x, Σ over sequences of the population variance), three calls accumulating
//! into the same buffers; `stats_scaler_row` gives sq_norms / sequences [dim]. Against
//! `ops::prune_stats::InputStats` with its cuda_matches_cpu tolerances (1e-13 + 1e-12·|ref|;
//! bit-identical when a sequence is one chunk; scaler_row exact).

use cuda_cpu::{Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::prune_stats::cuda::{columns_geometry, scaler_row_geometry, CHUNK_TOKENS};
use sparsetune::ops::prune_stats::InputStats;
use sparsetune::testing::{assert_close_f64, random_f32};

use crate::{buffer, i32s, run, tensor};

/// (seqs, seq_len, dim): the op test's shapes (seq_len 300 spans three chunks); one element;
/// a sequence of exactly one chunk with a full 256-column block, and one token and one
/// column more (a second chunk of one token, a column block of one column).
const SHAPES: [(usize, usize, usize); 9] = [
    (1, 7, 5),
    (3, 65, 33),
    (3, 7, 129),
    (1, 65, 129),
    (3, 300, 33),
    (1, 300, 5),
    (1, 1, 1),
    (2, 128, 256),
    (2, 129, 257),
];

/// Three accumulations and scaler_row the way `prune_stats::cuda` launches them, against the
/// CPU reference.
fn check<T: CudaFloat>((seqs, seq_len, dim): (usize, usize, usize), guard: Guard) {
    let what = format!("prune_stats {} S={seqs} T={seq_len} in={dim} {guard:?}", T::DTYPE);
    let mut want = InputStats::zeros(dim, false);
    let [sq_norms, sums, seq_var_sum] = [(); 3].map(|_| Buffer::filled(dim, 0f64, guard));
    let g = columns_geometry(seqs, seq_len, dim).unwrap();
    let [seqs_i, len_i, dim_i, chunk_i, chunks_i] = i32s([seqs, seq_len, dim, CHUNK_TOKENS, g.chunks]);
    for call in 0..3 {
        // An offset mean makes the variance differ from E[x²].
        let v = random_f32(seqs * seq_len * dim, 1.0, 101 + call).iter().map(|a| a + 0.25).collect();
        let x = tensor::<T>(v, &[seqs, seq_len, dim]);
        want.accumulate(&x).unwrap();
        let partial = Buffer::filled(seqs * g.chunks * 2 * dim, f64::NAN, guard);
        let kernel = format!("stats_partial_{}", T::SUFFIX);
        let x_buf = buffer::<T>(&x, guard);
        run("prune_stats", &kernel, g.partial, &[&x_buf, &partial, &seqs_i, &len_i, &dim_i, &chunk_i, &chunks_i]);
        let args: [&dyn cuda_cpu::Arg; 8] =
            [&partial, &sq_norms, &sums, &seq_var_sum, &seqs_i, &len_i, &dim_i, &chunks_i];
        run("prune_stats", "stats_reduce", g.reduce, &args);
    }
    let got = InputStats {
        tokens: want.tokens,
        sequences: want.sequences,
        sq_norms: sq_norms.to_vec(),
        sums: sums.to_vec(),
        seq_var_sum: seq_var_sum.to_vec(),
        xtx: None,
    };
    for (name, got, want) in [
        ("sq_norms", &got.sq_norms, &want.sq_norms),
        ("sums", &got.sums, &want.sums),
        ("seq_var_sum", &got.seq_var_sum, &want.seq_var_sum),
    ] {
        assert_close_f64(&format!("{what} {name}"), got, want, 1e-13, 1e-12);
        if seq_len <= CHUNK_TOKENS {
            // One chunk per sequence: the reference's summation order, bit for bit.
            assert_eq!(got, want, "{what} {name} bits");
        }
    }

    let out = Buffer::filled(dim, f64::NAN, guard);
    let sequences = got.sequences.max(1) as f64;
    run("prune_stats", "stats_scaler_row", scaler_row_geometry(dim).unwrap(), &[&sq_norms, &out, &sequences, &dim_i]);
    assert_eq!(out.to_vec(), got.scaler_row(), "{what} scaler_row");
}

f32_and_bf16_tests!(SHAPES[6], SHAPES);
