//! `cuda/sparsegpt.cu` on the CPU (f64 W [rows, cols], H and U [cols, cols]), each kernel alone
//! against its piece of `ops::sparsegpt::cpu`, then the whole `ops::sparsegpt::prune` sequence:
//! - `sparsegpt_dead_inputs` and `sparsegpt_damp` (steps 1–2): W with its dead columns zeroed
//!   bit for bit as `cpu::prepare` leaves it, diag = H_jj or 1, H_jj = diag_j + damp, nothing
//!   else written; then U (cholesky.cu, see cholesky.rs) against `cpu::prepare`'s;
//!   (rows, cols): the op test's (13, 101) with inputs 0 and 64 dead, (1, 1) all dead, one
//!   block of 256 threads less, full and one more (255, 256, 257);
//! - `sparsegpt_block_scores`: bit for bit the f32 scores of `cpu::prune`, blocks at offsets,
//!   of 1, 256 and 257 scores and of 768 (three full CUDA blocks);
//! - `sparsegpt_block_columns` on W after step 1 and U from `cpu::prepare`, unstructured (the
//!   block's selection as `ops::sparsegpt` makes it) and N:M (null selection), outputs poisoned:
//!   columns outside the block, keep outside it untouched; keep = the selection (unstructured)
//!   or N of every M (N:M); pruned weights exactly 0 and kept errors exactly 0; the errors
//!   satisfy W1 after = W1 before − Err1·U1 (what the lazy DGEMM relies on); a block of all
//!   the columns equals `cpu::prune` with that block size. Blocks of 1, 33, 40, 64, 250 (3:5
//!   groups straddling the 32-column register slots) and 256 columns (every slot), at 0 and at
//!   offsets up to the last column; 1, 7, 8 (one CUDA block of warps) and 9 rows;
//! - `sparsegpt_pack_mask`: `BitMask` bytes into poison, columns not multiples of 8, 256 and
//!   257 output bytes;
//! - the whole op (prepare, per block scores → selection → column loop → lazy update, the mask
//!   packed) with its DGEMMs on the host (`linalg::gemm_f64`; cuBLAS is not modelled) against
//!   `cpu::prune`: the op test's 15 cases, seeds and tolerance (masks equal, weights within
//!   1e-9·max|ref| + 1e-9·|ref|, pruned weights 0), plus 2×1 columns, one block of exactly 256
//!   columns on 8 rows, 256 + 1 columns on 9 rows, 3:5 in a 250-column block and 1:2.

use cuda_cpu::{Arg, Buffer, Guard, Null};
use sparsetune::linalg::{self, gemm_f64};
use sparsetune::ops::prune_select::cpu::{prune_lowest_per_row, pruned_count};
use sparsetune::ops::sparsegpt::cuda::{
    block_columns_geometry, block_scores_geometry, pack_mask_geometry, per_column_geometry, MAX_BLOCK_COLUMNS,
};
use sparsetune::ops::sparsegpt::{cpu, TEST_CASES};
use sparsetune::sparse::BitMask;
use sparsetune::testing::{correlated_hessian as hessian, random_f64, random_mask};

use crate::cholesky::{assert_matches, bits, inverse_cholesky_upper, on_host, spd};
use crate::{each_case, i32s, run};

/// A sparsity (unstructured) or an N:M pattern.
type Rule = (f64, Option<(usize, usize)>);

const fn un(s: f64) -> Rule {
    (s, None)
}

const fn nm(n: usize, m: usize) -> Rule {
    (0.0, Some((n, m)))
}

/// What the keep bytes and packed bits start as, so unwritten bytes show.
const POISON: u8 = 0xAA;
/// The op test's damping.
const PERCDAMP: f64 = 0.01;

fn dead_inputs(h: &Buffer<f64>, w: &Buffer<f64>, diag: &Buffer<f64>, rows: usize, cols: usize) {
    let [rows_i, cols_i] = i32s([rows, cols]);
    run("sparsegpt", "sparsegpt_dead_inputs", per_column_geometry(cols).unwrap(), &[h, w, diag, &rows_i, &cols_i]);
}

fn damp(h: &Buffer<f64>, diag: &Buffer<f64>, cols: usize, damp: f64) {
    run("sparsegpt", "sparsegpt_damp", per_column_geometry(cols).unwrap(), &[h, diag, &i32s([cols])[0], &damp]);
}

/// The block's scores [rows·count] from `sparsegpt_block_scores` (into NaN).
fn block_scores(w: &Buffer<f64>, u: &Buffer<f64>, (rows, cols, i1, count): Block, guard: Guard) -> Vec<f32> {
    let scores = Buffer::filled(rows * count, f32::NAN, guard);
    let [rows_i, cols_i, i1_i, count_i] = i32s([rows, cols, i1, count]);
    let args: [&dyn Arg; 7] = [w, u, &scores, &rows_i, &cols_i, &i1_i, &count_i];
    run("sparsegpt", "sparsegpt_block_scores", block_scores_geometry(rows, count).unwrap(), &args);
    scores.to_vec()
}

/// `cpu::prune`'s scores of the block: (W[r, i1+c]² / U[i1+c, i1+c]²) as f32.
fn reference_scores(w: &[f64], u: &[f64], (rows, cols, i1, count): Block) -> Vec<f32> {
    (0..rows * count)
        .map(|k| {
            let (x, d) = (w[k / count * cols + i1 + k % count], u[(i1 + k % count) * (cols + 1)]);
            (x * x / (d * d)) as f32
        })
        .collect()
}

/// `ops::sparsegpt::select_block` (a host selection there too): the block's flat keep bits.
fn select(scores: &[f32], sparsity: f64) -> BitMask {
    prune_lowest_per_row(scores, 1, scores.len(), pruned_count(scores.len(), sparsity))
}

/// (rows, cols, i1, count): a block of columns [i1, i1 + count) of W [rows, cols].
type Block = (usize, usize, usize, usize);

/// `sparsegpt_block_columns` as `cuda::block_columns` launches it: the selection's bits, or a
/// null pointer and the N:M pair.
fn block_columns(
    (w, u, keep, err1): (&Buffer<f64>, &Buffer<f64>, &Buffer<u8>, &Buffer<f64>),
    selection: Option<&Buffer<u8>>,
    nm: Option<(usize, usize)>,
    (rows, cols, i1, count): Block,
) {
    let (n, m) = nm.unwrap_or((0, 0));
    let [rows_i, cols_i, i1_i, count_i, n_i, m_i] = i32s([rows, cols, i1, count, n, m]);
    let block_keep: &dyn Arg = match selection {
        Some(bits) => bits,
        None => &Null,
    };
    let args: [&dyn Arg; 11] = [w, u, block_keep, keep, err1, &rows_i, &cols_i, &i1_i, &count_i, &n_i, &m_i];
    run("sparsegpt", "sparsegpt_block_columns", block_columns_geometry(rows).unwrap(), &args);
}

/// `sparsegpt_pack_mask` of keep bytes [rows, cols] into poisoned bytes.
fn pack_mask(keep: &Buffer<u8>, rows: usize, cols: usize, guard: Guard) -> Vec<u8> {
    let stride = BitMask::stride_for(cols);
    let out = Buffer::filled(rows * stride, POISON, guard);
    let [rows_i, cols_i, stride_i] = i32s([rows, cols, stride]);
    run(
        "sparsegpt",
        "sparsegpt_pack_mask",
        pack_mask_geometry(rows, cols).unwrap(),
        &[keep, &out, &rows_i, &cols_i, &stride_i],
    );
    out.to_vec()
}

/// What `ops::sparsegpt::prepare` computes on the way: diag after step 1, H damped, and U.
struct Prepared {
    diag: Vec<f64>,
    damped: Vec<f64>,
    u: Vec<f64>,
}

/// `ops::sparsegpt::prepare` on the CPU harness: steps 1–2 on `w` and a copy of `h`, the mean
/// of the diagonal summed on the host in the CPU's order, U by cholesky.cu's sequence.
fn prepare(w: &Buffer<f64>, h: &[f64], rows: usize, cols: usize, guard: Guard) -> Prepared {
    let (h_buf, diag) = (Buffer::from_slice(h, guard), Buffer::filled(cols, f64::NAN, guard));
    dead_inputs(&h_buf, w, &diag, rows, cols);
    assert_eq!(bits(&h_buf.to_vec()), bits(h), "sparsegpt_dead_inputs wrote H");
    let diag = diag.to_vec();
    let damped = Buffer::from_slice(h, guard);
    damp(&damped, &Buffer::from_slice(&diag, guard), cols, PERCDAMP * diag.iter().sum::<f64>() / cols as f64);
    let damped = damped.to_vec();
    let u = inverse_cholesky_upper(&damped, cols, guard);
    Prepared { diag, damped, u }
}

/// (rows, cols, dead inputs) of the prepare checks.
type PrepareCase = (usize, usize, &'static [usize]);

const PREPARE_CASES: [PrepareCase; 5] =
    [(13, 101, &[0, 64]), (1, 1, &[0]), (3, 255, &[254]), (2, 256, &[]), (4, 257, &[0, 256])];

fn check_prepare((rows, cols, dead): PrepareCase, guard: Guard) {
    let what = format!("sparsegpt prepare {rows}x{cols} dead {dead:?} {guard:?}");
    let h = hessian(cols, 3, dead);
    let w0 = random_f64(rows * cols, 1.0, 4);
    let mut w_cpu = w0.clone();
    let u_cpu = cpu::prepare(&mut w_cpu, h.clone(), rows, cols, PERCDAMP).unwrap();
    let w = Buffer::from_slice(&w0, guard);
    let got = prepare(&w, &h, rows, cols, guard);
    assert_eq!(bits(&w.to_vec()), bits(&w_cpu), "{what}: dead columns zeroed, nothing else touched");
    let diag = |j: usize| if dead.contains(&j) { 1.0 } else { h[j * cols + j] };
    assert_eq!(bits(&got.diag), bits(&(0..cols).map(diag).collect::<Vec<_>>()), "{what}: diag");
    let damping = PERCDAMP * got.diag.iter().sum::<f64>() / cols as f64;
    let damped: Vec<f64> =
        (0..cols * cols).map(|k| if k % (cols + 1) == 0 { diag(k / cols) + damping } else { h[k] }).collect();
    assert_eq!(bits(&got.damped), bits(&damped), "{what}: damped H");
    assert_matches(&format!("{what}: U"), &got.u, &u_cpu);
}

/// Blocks of the scores checks, as in the header.
const SCORE_BLOCKS: [Block; 6] =
    [(1, 1, 0, 1), (13, 101, 37, 64), (3, 300, 44, 256), (1, 300, 43, 257), (257, 5, 4, 1), (8, 32, 0, 32)];

fn check_block_scores(block @ (rows, cols, _, _): Block, guard: Guard) {
    let u = linalg::inverse_cholesky_upper(spd(cols, cols as u64), cols).unwrap();
    let w = random_f64(rows * cols, 1.0, 5 + rows as u64);
    let got = block_scores(&Buffer::from_slice(&w, guard), &Buffer::from_slice(&u, guard), block, guard);
    let f32_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(f32_bits(&got), f32_bits(&reference_scores(&w, &u, block)), "scores {block:?} {guard:?}");
}

/// (block, rule) of the column-loop checks.
type ColumnsCase = (Block, Rule);

const COLUMN_CASES: [ColumnsCase; 10] = [
    ((1, 1, 0, 1), un(0.5)),
    ((9, 40, 0, 40), un(0.5)),
    ((8, 256, 0, 256), un(0.7)),
    ((9, 256, 0, 256), nm(2, 4)),
    ((5, 250, 0, 250), nm(3, 5)),
    ((3, 64, 0, 64), nm(1, 2)),
    ((1, 40, 0, 40), nm(2, 4)),
    ((17, 300, 44, 256), un(0.5)),
    ((7, 300, 260, 40), nm(4, 8)),
    ((2, 97, 33, 33), un(0.6)),
];

fn check_block_columns((block @ (rows, cols, i1, count), (sparsity, nm)): ColumnsCase, guard: Guard) {
    let what = format!("sparsegpt_block_columns {block:?} {sparsity} {nm:?} {guard:?}");
    let seed = (1000 * rows + cols) as u64;
    let h = hessian(cols, seed, &[3]);
    let w0 = random_f64(rows * cols, 1.0, seed + 5);
    let mut w_init = w0.clone();
    let u = cpu::prepare(&mut w_init, h.clone(), rows, cols, PERCDAMP).unwrap();
    let selection = nm.is_none().then(|| select(&reference_scores(&w_init, &u, block), sparsity));
    let selection_buf = selection.as_ref().map(|s| Buffer::from_slice(s.bytes(), guard));
    let (w, u_buf) = (Buffer::from_slice(&w_init, guard), Buffer::from_slice(&u, guard));
    let (keep, err1) = (Buffer::filled(rows * cols, POISON, guard), Buffer::filled(rows * count, f64::NAN, guard));
    block_columns((&w, &u_buf, &keep, &err1), selection_buf.as_ref(), nm, block);
    let (got, keep, err1) = (w.to_vec(), keep.to_vec(), err1.to_vec());

    let in_block = |k: usize| (i1..i1 + count).contains(&(k % cols));
    let outside = |v: &[f64]| bits(&(0..rows * cols).filter(|&k| !in_block(k)).map(|k| v[k]).collect::<Vec<_>>());
    assert_eq!(outside(&got), outside(&w_init), "{what}: W written outside the block");
    assert!((0..rows * cols).all(|k| in_block(k) || keep[k] == POISON), "{what}: keep written outside the block");
    for (r, c) in (0..rows).flat_map(|r| (0..count).map(move |c| (r, c))) {
        let (k, e) = (r * cols + i1 + c, err1[r * count + c]);
        assert!(keep[k] <= 1, "{what}: keep ({r}, {c}) is {}", keep[k]);
        assert!(keep[k] == 1 || got[k] == 0.0, "{what}: pruned ({r}, {c}) is {}", got[k]);
        assert!(keep[k] == 0 || e == 0.0, "{what}: kept ({r}, {c}) has error {e}");
        if let Some(s) = &selection {
            assert_eq!(keep[k] == 1, s.get(0, r * count + c), "{what}: ({r}, {c}) against the selection");
        }
    }
    if let Some((n, m)) = nm {
        let groups = (0..rows).flat_map(|r| (0..count).step_by(m).map(move |g| r * cols + i1 + g));
        assert!(groups.clone().all(|g| keep[g..g + m].iter().filter(|&&b| b == 1).count() == n), "{what}: N:M");
    }
    // W1 after = W1 before − Err1·U1, U1 the block's upper triangle of U.
    let block_of = |v: &[f64]| (0..rows * count).map(|k| v[k / count * cols + i1 + k % count]).collect::<Vec<_>>();
    let u1: Vec<f64> = (0..count * count)
        .map(|k| if k % count >= k / count { u[(i1 + k / count) * cols + i1 + k % count] } else { 0.0 })
        .collect();
    let mut want = block_of(&w_init);
    gemm_f64(rows, count, count, &mut want, count, true, -1.0, &err1, count, false, &u1, count, false);
    assert_matches(&format!("{what}: W1 − Err1·U1"), &block_of(&got), &want);
    if i1 == 0 && count == cols {
        // The whole row is one block: the CPU's SparseGPT with that block size.
        let mut want = w0;
        let mask = cpu::prune(&mut want, h, rows, cols, sparsity, nm, cols, PERCDAMP).unwrap();
        assert!((0..rows * cols).all(|k| (keep[k] == 1) == mask.get(k / cols, k % cols)), "{what}: mask");
        assert_matches(&what, &got, &want);
    }
}

const PACK_SHAPES: [(usize, usize); 7] = [(1, 1), (3, 7), (2, 8), (5, 9), (3, 100), (4, 512), (1, 2049)];

fn check_pack_mask((rows, cols): (usize, usize), guard: Guard) {
    let mask = random_mask(rows, cols, 0.5, None, (rows + cols) as u64);
    let keep: Vec<u8> = (0..rows * cols).map(|k| mask.get(k / cols, k % cols) as u8).collect();
    let got = pack_mask(&Buffer::from_slice(&keep, guard), rows, cols, guard);
    assert_eq!(got, mask.bytes(), "sparsegpt_pack_mask {rows}x{cols} {guard:?}");
}

/// `ops::sparsegpt::prune` on the CPU harness; returns W and the mask.
fn prune(
    w0: &[f64],
    h: &[f64],
    (rows, cols): (usize, usize),
    (sparsity, nm): Rule,
    block_size: usize,
    guard: Guard,
) -> (Vec<f64>, BitMask) {
    let block = block_size.min(cols.max(1));
    assert!(block <= MAX_BLOCK_COLUMNS);
    let mut w = Buffer::from_slice(w0, guard);
    let u = prepare(&w, h, rows, cols, guard).u;
    let u_buf = Buffer::from_slice(&u, guard);
    let keep = Buffer::filled(rows * cols, POISON, guard);
    for i1 in (0..cols).step_by(block) {
        let (count, i2) = (block.min(cols - i1), (i1 + block).min(cols));
        let selection = nm.is_none().then(|| {
            let scores = block_scores(&w, &u_buf, (rows, cols, i1, count), guard);
            Buffer::from_slice(select(&scores, sparsity).bytes(), guard)
        });
        let err1 = Buffer::filled(rows * count, f64::NAN, guard);
        block_columns((&w, &u_buf, &keep, &err1), selection.as_ref(), nm, (rows, cols, i1, count));
        if i2 < cols {
            // Lazy update of the columns after the block: W[:, i2:] −= Err1 · U[i1:i2, i2:].
            let (e, u_rest) = (err1.to_vec(), &u[i1 * cols + i2..]);
            w = on_host(w, guard, |w| {
                gemm_f64(rows, cols - i2, count, &mut w[i2..], cols, true, -1.0, &e, count, false, u_rest, cols, false)
            });
        }
    }
    assert!(keep.to_vec().iter().all(|&k| k <= 1), "keep not written everywhere");
    (w.to_vec(), BitMask::from_bytes(rows, cols, pack_mask(&keep, rows, cols, guard)).unwrap())
}

/// (rows, cols, rule, block size) of the whole op.
type PruneCase = (usize, usize, Rule, usize);

/// The op test's cases (seed 100 + 10·index, as there), then the edges of the header.
fn prune_cases() -> Vec<PruneCase> {
    let edges = [
        (2, 1, un(0.5), 128),
        (8, 256, un(0.5), 256),
        (9, 257, un(0.6), 256),
        (5, 250, nm(3, 5), 250),
        (3, 64, nm(1, 2), 16),
    ];
    TEST_CASES.into_iter().chain(edges).collect()
}

/// The whole op on `prune_cases()[index]` against `cpu::prune`, as the op test compares them.
fn check_prune(index: usize, guard: Guard) {
    let (rows, cols, rule @ (s, nm), block_size) = prune_cases()[index];
    let what = format!("sparsegpt {s} {nm:?} {rows}x{cols} block {block_size} {guard:?}");
    let seed = 100 + 10 * index as u64;
    let h = hessian(cols, seed, &[3]);
    let w0 = random_f64(rows * cols, 1.0, seed + 5);
    let mut want = w0.clone();
    let want_mask = cpu::prune(&mut want, h.clone(), rows, cols, s, nm, block_size, PERCDAMP).unwrap();
    let (got, mask) = prune(&w0, &h, (rows, cols), rule, block_size, guard);
    let flips: Vec<usize> =
        (0..rows * cols).filter(|&k| mask.get(k / cols, k % cols) != want_mask.get(k / cols, k % cols)).collect();
    assert!(
        flips.is_empty(),
        "{what}: masks differ at {} positions, first {:?}",
        flips.len(),
        &flips[..flips.len().min(8)]
    );
    assert!((0..rows * cols).all(|k| mask.get(k / cols, k % cols) || got[k] == 0.0), "{what}: pruned ≠ 0");
    assert_matches(&format!("{what} weights"), &got, &want);
}

/// Every kernel of the file: an unstructured case (block scores) and an N:M case (null
/// selection), each through the whole op.
pub fn smoke() {
    check_prune(15, Guard::After);
    check_prune(19, Guard::After);
}

#[test]
fn dead_inputs_and_damping_match_cpu_prepare() {
    each_case(&PREPARE_CASES, check_prepare);
}

#[test]
fn block_scores_match_cpu() {
    each_case(&SCORE_BLOCKS, check_block_scores);
}

#[test]
fn block_columns_match_cpu() {
    each_case(&COLUMN_CASES, check_block_columns);
}

#[test]
fn pack_mask_matches_bitmask() {
    each_case(&PACK_SHAPES, check_pack_mask);
}

#[test]
fn prune_matches_cpu() {
    each_case(&(0..prune_cases().len()).collect::<Vec<_>>(), check_prune);
}
