//! The fast CPU path of [`super::cpu::attention`] (same layout and formulas), f32 math on
//! the cache's own element type (BF16 widened as it is read). Rayon tasks:
//! - a run of at least \[`BLOCK_MIN_ROWS`\] consecutive rows of one sequence (a prefill) is
//!   done in blocks of up to \[`BLOCK_ROWS`\] rows per kv head g, as matrices over the g's
//!   keys gathered to f32 (P = the block's last position + 1): S = c·Q·Kᵀ [rows·group, P] by
//!   the gemm crate, e = exp(S − row max) on each row's own keys u ≤ position (0 beyond),
//!   O = e·V / Σ e (\[`block`\]);
//! - any other row, one task per (row n, query head h) (\[`attend`\]): two passes over the
//!   keys 0 ..= positions\[n\], scores s_u = (c·q)·k_u and their max, then p_u = e^{s_u − max}
//!   for all u in one loop, o = Σ_u p_u·v_u / Σ_u p_u with o's columns summed in registers;
//!   every loop auto-vectorizes.
//!
//! Sums of p in f64. Tested against the reference in `super::tests`.

use std::ops::Range;

use rayon::prelude::*;

use super::cpu::AttentionDims;
use crate::ops::matmul::cpu::strided;
use crate::ops::sum_f64_by;
use crate::storage::FloatElement;

/// scores\[u\] = q·keys_u for key rows [keys, D] with a stride of `stride` elements (`q` is
/// [D] f32, the keys widened). Two loops: each key's products summed in 16 partial sums
/// (one AVX-512 register; [`LANES`]), stored, and then each key's partial sums added as a
/// tree. Reducing within the first loop made the compiler vectorize it two lanes wide.
#[inline(always)]
fn scores_into<T: FloatElement>(q: &[f32], keys: &[T], stride: usize, scores: &mut [f32]) {
    let dim = q.len();
    let (q16, q_tail) = q.as_chunks::<LANES>();
    let mut partials = vec![[0f32; LANES]; scores.len()];
    for ((partial, key), s) in partials.iter_mut().zip(keys.chunks(stride)).zip(scores.iter_mut()) {
        let (k16, k_tail) = key[..dim].as_chunks::<LANES>();
        let mut acc = [0f32; LANES];
        for (x, y) in q16.iter().zip(k16) {
            for i in 0..LANES {
                acc[i] += x[i] * wide(y[i]);
            }
        }
        *partial = acc;
        *s = q_tail.iter().zip(k_tail).map(|(x, y)| x * wide(*y)).sum();
    }
    for (s, partial) in scores.iter_mut().zip(&partials) {
        let mut p = *partial;
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                p[i] += p[i + width];
            }
        }
        *s += p[0];
    }
}

/// Partial sums of a decode row's scores.
const LANES: usize = 16;

/// `v` widened to f32. A bf16 is its bits shifted into the high half (exact, and no NaN
/// test: `half`'s conversion quiets a signalling NaN, a branch in every widening loop; the
/// NaN stays a NaN either way).
#[inline(always)]
fn wide<T: FloatElement>(v: T) -> f32 {
    if T::DTYPE == crate::DType::BF16 && std::mem::size_of::<T>() == 2 {
        // SAFETY: T is bf16, two bytes.
        let bits: u16 = unsafe { std::mem::transmute_copy(&v) };
        f32::from_bits(u32::from(bits) << 16)
    } else {
        v.to_f32()
    }
}

/// `out` = `values` widened to f32. A plain loop, not an iterator collected: a collect's
/// fold is an outlined generic function, compiled without the caller's AVX-512 (the
/// decode's scores ran as SSE2 code that way).
#[inline(always)]
fn widen_into<T: FloatElement>(values: &[T], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(values) {
        *o = wide(*v);
    }
}

/// e^x for x ≤ 0 (a score minus its row's maximum), within 2·10⁻⁷ relative: x = n·ln 2 + r
/// with n an integer (rounded by adding 1.5·2²³) and |r| ≤ ln 2 / 2, e^r by its Taylor
/// polynomial of degree 7, times 2ⁿ built in the exponent bits. Below −87 (e^x < 2⁻¹²⁵)
/// it gives 0; NaN stays NaN. No calls and no branches, so that loops over it vectorize.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let below = x < -87.0;
    let xc = if below { -87.0 } else { x };
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if below {
        0.0
    } else {
        p * scale
    }
}

/// Rows of one sequence from which the attention is done in blocks.
const BLOCK_MIN_ROWS: usize = 8;
/// Most rows (tokens) of one block.
const BLOCK_ROWS: usize = 64;

/// Work of one task: a block of rows of one sequence for the query heads of kv head `g`, or
/// one (row, head).
#[derive(Clone, Debug)]
pub enum Task {
    /// Rows `rows` (one sequence), query heads g·group .. (g + 1)·group.
    Block {
        /// Query rows.
        rows: Range<usize>,
        /// Kv head.
        g: usize,
    },
    /// Query row n, query head `head`.
    Row {
        /// Query row.
        n: usize,
        /// Query head.
        head: usize,
    },
}

impl Task {
    /// The parts of o [N, Hq, D] this task's output fills, in its order: (offset in o,
    /// length), consecutive in the output.
    pub fn places(&self, d: AttentionDims) -> Vec<(usize, usize)> {
        let dim = d.cache.head_dim;
        match *self {
            Task::Block { ref rows, g } => {
                let group = d.group();
                rows.clone().map(|n| ((n * d.q_heads + g * group) * dim, group * dim)).collect()
            }
            Task::Row { n, head } => vec![((n * d.q_heads + head) * dim, dim)],
        }
    }
}

/// The tasks of a step's rows: runs of at least \[`BLOCK_MIN_ROWS`\] rows of one sequence in
/// blocks of up to \[`BLOCK_ROWS`\] per kv head, every other row per query head.
pub fn tasks(d: AttentionDims, seqs: &[u32]) -> Vec<Task> {
    let mut tasks = Vec::new();
    let mut start = 0;
    while start < seqs.len() {
        let end = start + seqs[start..].iter().take_while(|&&s| s == seqs[start]).count();
        if end - start >= BLOCK_MIN_ROWS {
            for r in (start..end).step_by(BLOCK_ROWS) {
                tasks.extend((0..d.cache.kv_heads).map(|g| Task::Block { rows: r..(r + BLOCK_ROWS).min(end), g }));
            }
        } else {
            tasks.extend((start..end).flat_map(|n| (0..d.q_heads).map(move |head| Task::Row { n, head })));
        }
        start = end;
    }
    tasks
}

/// What the tasks of one step read: queries whose row n, head h starts at n·q_stride + h·D,
/// the caches [B, S, Hkv, D], their sizes, and each row's sequence and position.
#[derive(Clone, Copy)]
pub struct Inputs<'a, Q, T> {
    /// Queries.
    pub q: &'a [Q],
    /// Elements from one query row to the next.
    pub q_stride: usize,
    /// Key cache.
    pub k: &'a [T],
    /// Value cache.
    pub v: &'a [T],
    /// Sizes.
    pub d: AttentionDims,
    /// Sequence of each row.
    pub seqs: &'a [u32],
    /// Position of each row.
    pub positions: &'a [u32],
}

/// The output of `task` ([`Task::places`] says where it goes). The loops are compiled for
/// AVX-512 or AVX2 as well and the best this CPU runs is taken (the same arithmetic in
/// every lane, so the same results).
pub fn run<Q: FloatElement, T: FloatElement>(task: &Task, inputs: &Inputs<'_, Q, T>) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::ops::infer_linear::cpu_fast::Isa;
        match Isa::best() {
            // SAFETY: this CPU runs the instruction set.
            Isa::Avx512Vbmi2 | Isa::Avx512 => return unsafe { run_avx512(task, inputs) },
            Isa::Avx2 => return unsafe { run_avx2(task, inputs) },
            Isa::Portable => {}
        }
    }
    run_plain(task, inputs)
}

/// [`run_plain`] compiled for one instruction set (the loops inline into it).
#[cfg(target_arch = "x86_64")]
macro_rules! entry {
    ($name:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<Q: FloatElement, T: FloatElement>(task: &Task, inputs: &Inputs<'_, Q, T>) -> Vec<f32> {
            run_plain(task, inputs)
        }
    };
}

#[cfg(target_arch = "x86_64")]
entry!(run_avx512, "avx512f,avx512bw,avx512vl,avx2,fma");
#[cfg(target_arch = "x86_64")]
entry!(run_avx2, "avx2,fma");

#[inline(always)]
fn run_plain<Q: FloatElement, T: FloatElement>(task: &Task, x: &Inputs<'_, Q, T>) -> Vec<f32> {
    let dim = x.d.cache.head_dim;
    match *task {
        Task::Block { ref rows, g } => block(x, x.seqs[rows.start], &x.positions[rows.clone()], rows.start, g),
        Task::Row { n, head } => {
            let mut out = vec![0f32; dim];
            let at = n * x.q_stride + head * dim;
            attend(&x.q[at..at + dim], x.k, x.v, x.d, (x.seqs[n], x.positions[n]), head, &mut out);
            out
        }
    }
}

/// o [N, Hq, D] (f32) from q [N, Hq, D] and the caches [B, S, Hkv, D].
pub fn attention<T: FloatElement>(
    q: &[T],
    k: &[T],
    v: &[T],
    d: AttentionDims,
    seqs: &[u32],
    positions: &[u32],
    o: &mut [f32],
) {
    let tasks = tasks(d, seqs);
    let inputs = Inputs { q, q_stride: d.q_heads * d.cache.head_dim, k, v, d, seqs, positions };
    let results: Vec<Vec<f32>> = tasks.par_iter().map(|t| run(t, &inputs)).collect();
    for (task, out) in tasks.iter().zip(results) {
        let mut from = 0;
        for (at, len) in task.places(d) {
            o[at..at + len].copy_from_slice(&out[from..from + len]);
            from += len;
        }
    }
}

/// Attention of rows `first ..` (positions `positions`, all of sequence `seq`) for the
/// query heads of kv head g, as matrices: with R = rows·group queries and P keys (the
/// largest position plus one), S [R, P] = c·Q·Kᵀ, e = exp(S − row max) on each row's keys
/// u ≤ its position (0 beyond), O [R, D] = e·V / Σ e. Returns O as [rows, group, D].
#[inline(always)]
fn block<Q: FloatElement, T: FloatElement>(
    inputs: &Inputs<'_, Q, T>,
    seq: u32,
    positions: &[u32],
    first: usize,
    g: usize,
) -> Vec<f32> {
    let Inputs { q, q_stride, k, v, d, .. } = *inputs;
    let (dim, group) = (d.cache.head_dim, d.group());
    let keys = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
    let r = positions.len() * group;
    let mut q_block = vec![0f32; r * dim];
    for (i, row) in q_block.chunks_exact_mut(dim).enumerate() {
        let at = (first + i / group) * q_stride + (g * group + i % group) * dim;
        widen_into(&q[at..at + dim], row);
    }
    let (k_block, v_block) = (gather(k, d, seq, g, keys), gather(v, d, seq, g, keys));
    let mut s = vec![0f32; r * keys];
    let c = d.scale() as f32;
    strided(r, keys, dim, (&mut s, keys, 1), false, c, (&q_block, dim, 1), (&k_block, 1, dim), false);
    let mut sums = vec![0f64; r];
    for (i, (row, sum)) in s.chunks_exact_mut(keys).zip(&mut sums).enumerate() {
        let seen = positions[i / group] as usize + 1;
        let max = row[..seen].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in &mut row[..seen] {
            *x = exp_nonpositive(*x - max);
        }
        *sum = sum_f64_by(&row[..seen], f64::from);
        row[seen..].fill(0.0);
    }
    let mut out = vec![0f32; r * dim];
    strided(r, dim, keys, (&mut out, dim, 1), false, 1.0, (&s, keys, 1), (&v_block, dim, 1), false);
    for (row, sum) in out.chunks_exact_mut(dim).zip(sums) {
        let inv = (1.0 / sum) as f32;
        row.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

/// Kv head g's rows of keys 0..keys of sequence `seq` in a cache, as f32 [keys, D].
#[inline(always)]
fn gather<T: FloatElement>(cache: &[T], d: AttentionDims, seq: u32, g: usize, keys: usize) -> Vec<f32> {
    let dim = d.cache.head_dim;
    let mut block = vec![0f32; keys * dim];
    for (u, row) in block.chunks_exact_mut(dim).enumerate() {
        let at = d.cache.row_offset(seq, u as u32) + g * dim;
        widen_into(&cache[at..at + dim], row);
    }
    block
}

/// One query row: `out` [D] = attention of `q_row` [D] (query head `head`) over keys
/// 0 ..= pos of sequence `seq` (`slot` = (seq, pos)) in the caches [B, S, Hkv, D].
#[inline(always)]
fn attend<Q: FloatElement, T: FloatElement>(
    q_row: &[Q],
    k: &[T],
    v: &[T],
    d: AttentionDims,
    slot: (u32, u32),
    head: usize,
    out: &mut [f32],
) {
    let dim = d.cache.head_dim;
    let scale = d.scale() as f32;
    let keys = slot.1 as usize + 1;
    // Kv head g of this sequence, [keys, D] with a stride of one cache row (Hkv·D).
    let start = d.cache.row_offset(slot.0, 0) + head / d.group() * dim;
    let (stride, end) = (d.cache.row_len(), start + (keys - 1) * d.cache.row_len() + dim);
    let (k_head, v_head) = (&k[start..end], &v[start..end]);
    let mut q_scaled = vec![0f32; dim];
    widen_into(q_row, &mut q_scaled);
    q_scaled.iter_mut().for_each(|x| *x *= scale);
    let mut scores = vec![0f32; keys];
    scores_into(&q_scaled, k_head, stride, &mut scores);
    // p_u = e^{s_u - max} over all keys at once (the exponential has no branch, so this
    // vectorizes), then o = Σ p_u·v_u / Σ p_u.
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    scores.iter_mut().for_each(|s| *s = exp_nonpositive(*s - max));
    let sum = sum_f64_by(&scores, f64::from);
    weighted_rows(&scores, v_head, stride, out);
    let inv = (1.0 / sum) as f32;
    out.iter_mut().for_each(|x| *x *= inv);
}

/// `out` [D] = Σ_u p_u·rows_u for rows [keys, D] with a stride of `stride` elements. Each
/// run of WIDTH columns is summed in registers over all keys, even and odd keys in two
/// separate sums (added at the end) so that consecutive keys do not wait on each other's
/// additions; the last columns (D not a multiple of WIDTH) in one plain sum.
#[inline(always)]
fn weighted_rows<T: FloatElement>(p: &[f32], rows: &[T], stride: usize, out: &mut [f32]) {
    const WIDTH: usize = 32;
    let dim = out.len();
    let whole = dim - dim % WIDTH;
    for c in (0..whole).step_by(WIDTH) {
        let (mut even, mut odd) = ([0f32; WIDTH], [0f32; WIDTH]);
        let mut keys = rows.chunks(stride).zip(p);
        while let Some((r0, &p0)) = keys.next() {
            let r0 = &r0[c..c + WIDTH];
            for i in 0..WIDTH {
                even[i] += p0 * wide(r0[i]);
            }
            if let Some((r1, &p1)) = keys.next() {
                let r1 = &r1[c..c + WIDTH];
                for i in 0..WIDTH {
                    odd[i] += p1 * wide(r1[i]);
                }
            }
        }
        for ((o, e), d) in out[c..c + WIDTH].iter_mut().zip(even).zip(odd) {
            *o = e + d;
        }
    }
    out[whole..].fill(0.0);
    for (row, &p_u) in rows.chunks(stride).zip(p) {
        for (acc, x) in out[whole..].iter_mut().zip(&row[whole..dim]) {
            *acc += p_u * wide(*x);
        }
    }
}
