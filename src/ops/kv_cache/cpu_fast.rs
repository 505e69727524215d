//! The fast CPU path of [`super::cpu::attention`] (same layout and formulas), f32 math on
//! the cache's own element type (BF16 widened as it is read). Tasks:
//! - a run of at least \[`BLOCK_MIN_ROWS`\] consecutive rows of one sequence (a prefill) is
//!   done in blocks of up to \[`BLOCK_ROWS`\] rows per kv head g, as matrices over the g's
//!   keys gathered to f32 (P = the block's last position + 1): S = c·Q·Kᵀ [rows·group, P],
//!   e = exp(S − row max) on each row's own keys u ≤ position (0 beyond), O = e·V / Σ e
//!   (\[`block`\]). The two products by the gemm crate, or with AVX-512 (D a multiple of
//!   16 up to 128) by the `x86` block kernels: 8 rows × 32 keys of S at a time from K
//!   transposed, then 4 (or 2) rows × D of O at a time, each over the keys its rows see
//!   (not every P: the causal half of a block's own keys is skipped); tested against the
//!   gemm path (atol 1e-5 + rtol 1e-4: other sums, other roundings);
//! - any other row n (a decode step's) in spans of up to [`SPAN_KEYS`] of its keys
//!   0 ..= positions\[n\], one task per (n, kv head g, span): for each query head h of g,
//!   two passes over the span's keys, scores s_u = (c·q_h)·k_u and their max m, then
//!   p_u = e^{s_u − m} in one loop, l = Σ_u p_u and o = Σ_u p_u·v_u with o's columns summed
//!   in registers (\[`span`\]); then [`merge`] joins a row's spans in order:
//!   M = max m, o = Σ e^{m − M}·o / Σ e^{m − M}·l (with one span, o / l). The query heads of
//!   a kv head read its keys and values in turn while they are in L1 (a span's rows are
//!   consecutive in the cache [B, Hkv, S, D]; a bf16 cache's rows widened to f32 once per
//!   span, in a [`Scratch`]), and a step's rows are cut into
//!   equal parts however many query heads share a kv head. Every loop
//!   auto-vectorizes. With AVX-512 (bf16 or f32, D a multiple of 16 up to 128) the two loops
//!   over the keys are the `x86` kernels instead: 16 keys' scores at once, a key's columns
//!   all at once, the same additions in the same order (the same bits, tested); the key and
//!   value rows are prefetched ahead of their reads.
//!
//! Sums of p in f64. Tested against the reference in `super::tests`.

use std::ops::Range;

use rayon::prelude::*;

use super::cpu::AttentionDims;
use crate::ops::infer_linear::cpu_fast::{compiled_for, Isa};
use crate::ops::matmul::cpu::strided;
use crate::ops::{exp_nonpositive, max_f32, sum_f64_by};
use crate::storage::FloatElement;
use crate::DType;

/// scores\[u\] = q·keys_u for key rows [keys, D] one after another (`q` is [D] f32, the keys
/// widened). Two loops: each key's products summed in 16 partial sums
/// (one AVX-512 register; [`LANES`]), stored, and then each key's partial sums added as a
/// tree. Reducing within the first loop made the compiler vectorize it two lanes wide.
/// With `WIDE` (AVX-512), whole runs of 16 keys go through [`x86::scores16`] instead: the
/// same products and additions, the tree of each key's partial sums done for 16 keys at once.
/// With `fetch`, the key rows are prefetched ahead of their reads and each value row as its
/// key is read.
#[inline(always)]
fn scores_into<T: FloatElement, const WIDE: bool>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    fetch: bool,
    scores: &mut [f32],
) {
    let dim = q.len();
    let (q16, q_tail) = q.as_chunks::<LANES>();
    // Keys done by the AVX-512 kernel (runs of 16), the rest by the loops below.
    #[cfg(target_arch = "x86_64")]
    let done = if WIDE && x86::takes::<T>(dim) {
        // A key's sum over an empty tail (dim a multiple of 16), to which its partials are
        // added.
        let empty: f32 = std::iter::empty::<f32>().sum();
        let n = scores.len() / LANES * LANES;
        for u0 in (0..n).step_by(LANES) {
            if fetch {
                for u in u0..u0 + LANES {
                    prefetch_row(keys, (u + 2 * LANES) * dim, dim);
                    prefetch_row(values, u * dim, dim);
                }
            }
            // SAFETY: the CPU runs AVX-512 (WIDE); keys u0 .. u0 + 16 lie within `keys`
            // (rows of dim values one after another), dim a multiple of 16 up to 128.
            unsafe { x86::scores16(q16, keys[u0 * dim..].as_ptr(), empty, &mut scores[u0..u0 + LANES]) };
        }
        n
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let mut partials = vec![[0f32; LANES]; scores.len() - done];
    let keys_left = keys.get(done * dim..).unwrap_or(&[]);
    for (u, ((partial, key), s)) in
        partials.iter_mut().zip(keys_left.chunks(dim)).zip(scores[done..].iter_mut()).enumerate()
    {
        let u = u + done;
        if fetch {
            prefetch_row(keys, (u + AHEAD) * dim, dim);
            prefetch_row(values, u * dim, dim);
        }
        let (k16, k_tail) = key.as_chunks::<LANES>();
        let mut acc = [0f32; LANES];
        for (x, y) in q16.iter().zip(k16) {
            for i in 0..LANES {
                acc[i] += x[i] * wide(y[i]);
            }
        }
        *partial = acc;
        *s = q_tail.iter().zip(k_tail).map(|(x, y)| x * wide(*y)).sum();
    }
    for (s, partial) in scores[done..].iter_mut().zip(&partials) {
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

/// Keys ahead of the one being read whose rows are fetched into the cache.
const AHEAD: usize = 8;

/// Asks for the cache lines of `rows[at .. at + dim]` (nothing past the slice's end): the
/// cache of a layer leaves the CPU's caches while the weights of the others stream through,
/// and a decode span's reads of its keys and values waited on memory without this.
#[inline(always)]
fn prefetch_row<T>(rows: &[T], at: usize, dim: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(row) = rows.get(at..at + dim) {
        let bytes = std::mem::size_of_val(row);
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch reads nothing; the address lies within `row`.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().cast::<i8>().add(line));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, at, dim);
}

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

/// Rows of one sequence from which the attention is done in blocks.
const BLOCK_MIN_ROWS: usize = 8;
/// Most rows (tokens) of one block.
const BLOCK_ROWS: usize = 64;

/// Keys of a decode row's span (a multiple of 16, the AVX-512 scores' run).
pub const SPAN_KEYS: usize = 64;

/// A block task: rows `rows` of one sequence, query heads g·group .. (g + 1)·group.
#[derive(Clone, Debug)]
pub struct Block {
    /// Query rows.
    pub rows: Range<usize>,
    /// Kv head.
    pub g: usize,
}

impl Block {
    /// The parts of o [N, Hq, D] this block's output fills, in its order: (offset in o,
    /// length), one per row.
    pub fn places(&self, d: AttentionDims) -> Vec<(usize, usize)> {
        let len = d.group() * d.cache.head_dim;
        self.rows.clone().map(|n| (group_at(d, n, self.g), len)).collect()
    }
}

/// A span task: query row n, query heads g·group .. (g + 1)·group, keys `keys` (a part of
/// 0 ..= positions\[n\]).
#[derive(Clone, Debug)]
pub struct Span {
    /// Query row.
    pub n: usize,
    /// Kv head.
    pub g: usize,
    /// Keys.
    pub keys: Range<usize>,
}

/// A step's attention tasks.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    /// The blocks, each sequence's in row order and per block in kv head order.
    pub blocks: Vec<Block>,
    /// The spans, a row's spans of a kv head consecutive and in key order.
    pub spans: Vec<Span>,
}

/// Where the outputs of row n's query heads g·group .. (g + 1)·group start in o [N, Hq, D].
fn group_at(d: AttentionDims, n: usize, g: usize) -> usize {
    (n * d.q_heads + g * d.group()) * d.cache.head_dim
}

/// The tasks of a step's rows: runs of at least \[`BLOCK_MIN_ROWS`\] rows of one sequence in
/// blocks of up to \[`BLOCK_ROWS`\] per kv head, every other row in spans of up to
/// [`SPAN_KEYS`] keys per kv head (a row's spans of a kv head consecutive, in key order).
pub fn tasks(d: AttentionDims, seqs: &[u32], positions: &[u32]) -> Tasks {
    let mut tasks = Tasks::default();
    let mut start = 0;
    while start < seqs.len() {
        let end = start + seqs[start..].iter().take_while(|&&s| s == seqs[start]).count();
        if end - start >= BLOCK_MIN_ROWS {
            for r in (start..end).step_by(BLOCK_ROWS) {
                tasks.blocks.extend((0..d.cache.kv_heads).map(|g| Block { rows: r..(r + BLOCK_ROWS).min(end), g }));
            }
        } else {
            for (n, &position) in positions.iter().enumerate().take(end).skip(start) {
                let keys = position as usize + 1;
                for g in 0..d.cache.kv_heads {
                    tasks.spans.extend((0..keys).step_by(SPAN_KEYS).map(|k| Span {
                        n,
                        g,
                        keys: k..(k + SPAN_KEYS).min(keys),
                    }));
                }
            }
        }
        start = end;
    }
    tasks
}

/// The runs of consecutive spans of one (row, kv head) among `spans` (in the order
/// [`tasks`] gives them): (where their merged output starts in o [N, Hq, D], indices in
/// `spans`).
pub fn span_runs(spans: &[Span], d: AttentionDims) -> Vec<(usize, Range<usize>)> {
    let mut runs: Vec<(usize, Range<usize>)> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        let at = group_at(d, span.n, span.g);
        match runs.last_mut() {
            Some((run_at, r)) if *run_at == at && r.end == i => r.end = i + 1,
            _ => runs.push((at, i..i + 1)),
        }
    }
    runs
}

/// Working space of attention tasks, kept from one to the next by the caller (its contents
/// do not matter: every value is written before it is read).
#[derive(Default)]
pub struct Scratch {
    /// A span's keys and values widened to f32.
    wide: Vec<f32>,
    /// A head's scores, then its weights.
    scores: Vec<f32>,
    /// A query row scaled.
    q: Vec<f32>,
    /// A block's: queries [R, D], keys and values [P, D], K transposed, scores then
    /// weights [R, P], keys each row sees, Σ e per row, output [R, D].
    block: BlockScratch,
}

#[derive(Default)]
struct BlockScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    kt: Vec<f32>,
    s: Vec<f32>,
    seen: Vec<usize>,
    sums: Vec<f64>,
    out: Vec<f32>,
}

/// The first `len` values of `buf`, grown (with zeros) where it is shorter; what it held
/// before is left in place.
fn first<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
}

/// A span's results for the `group` query heads of its kv head, head j at j: the largest
/// score m, l = Σ e^{s − m} (f64) and o = Σ e^{s − m}·v, D values (not divided by l).
pub struct SpanOut<'a> {
    /// m per head (`group` values).
    pub max: &'a mut [f32],
    /// l per head (`group` values).
    pub sum: &'a mut [f64],
    /// o per head [group, D].
    pub o: &'a mut [f32],
}

/// The attention of one (row, kv head) from the results of its spans `run` (a run of
/// [`span_runs`]) in key order, among a step's span results (span s, head j at s·group + j;
/// o [spans, group, D]): for each head, M = max m, out = Σ e^{m − M}·o / Σ e^{m − M}·l, the
/// sums in span order (f64 for l). With one span, o / l as the span computed them.
/// `out` [group, D].
pub fn merge(max: &[f32], sum: &[f64], o: &[f32], run: Range<usize>, group: usize, out: &mut [f32]) {
    let dim = out.len() / group.max(1);
    let (m0, m1) = (run.start * group, run.end * group);
    let (max, sum, o) = (&max[m0..m1], &sum[m0..m1], &o[m0 * dim..m1 * dim]);
    let spans = max.len() / group.max(1);
    assert!(
        max.len() == spans * group && sum.len() == max.len() && o.len() == max.len() * dim && out.len() == group * dim,
        "attention: span results of {} heads",
        group
    );
    for (j, acc) in out.chunks_exact_mut(dim).enumerate() {
        let top = (0..spans).map(|s| max[s * group + j]).fold(f32::NEG_INFINITY, f32::max);
        acc.fill(0.0);
        let mut total = 0f64;
        for s in 0..spans {
            let at = s * group + j;
            let w = exp_nonpositive(max[at] - top);
            total += f64::from(w) * sum[at];
            for (a, &x) in acc.iter_mut().zip(&o[at * dim..(at + 1) * dim]) {
                *a += w * x;
            }
        }
        let inv = (1.0 / total) as f32;
        acc.iter_mut().for_each(|a| *a *= inv);
    }
}

/// What the tasks of one step read: queries whose row n, head h starts at n·q_stride + h·D,
/// the caches [B, Hkv, S, D], their sizes, and each row's sequence and position.
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

/// A block task's output [rows, group, D] ([`Block::places`] says where it goes), in
/// `scratch`. Compiled for the best instruction set this CPU runs (the inference linear's
/// `compiled_for`; the AVX-512 block kernels there).
pub fn run_block<'s, Q: FloatElement, T: FloatElement>(
    task: &Block,
    inputs: &Inputs<'_, Q, T>,
    scratch: &'s mut Scratch,
) -> &'s [f32] {
    let scratch = &mut scratch.block;
    compiled_for(
        Isa::best(),
        #[inline(always)]
        |wide| {
            if wide {
                block::<Q, T, true>(task, inputs, scratch)
            } else {
                block::<Q, T, false>(task, inputs, scratch)
            }
        },
    )
}

/// A span task's results into `out`, compiled as [`run_block`] is (the same arithmetic in
/// every lane, so the same results on every instruction set).
pub fn run_span<Q: FloatElement, T: FloatElement>(
    task: &Span,
    inputs: &Inputs<'_, Q, T>,
    out: SpanOut<'_>,
    scratch: &mut Scratch,
) {
    compiled_for(
        Isa::best(),
        #[inline(always)]
        |wide| {
            if wide {
                span::<Q, T, true>(task, inputs, out, scratch)
            } else {
                span::<Q, T, false>(task, inputs, out, scratch)
            }
        },
    )
}

/// o [N, Hq, D] (f32) from q [N, Hq, D] and the caches [B, Hkv, S, D].
pub fn attention<T: FloatElement>(
    q: &[T],
    k: &[T],
    v: &[T],
    d: AttentionDims,
    seqs: &[u32],
    positions: &[u32],
    o: &mut [f32],
) {
    let inputs = Inputs { q, q_stride: d.q_heads * d.cache.head_dim, k, v, d, seqs, positions };
    let Tasks { blocks, spans } = tasks(d, seqs, positions);
    let results: Vec<Vec<f32>> =
        blocks.par_iter().map_init(Scratch::default, |scratch, t| run_block(t, &inputs, scratch).to_vec()).collect();
    for (task, out) in blocks.iter().zip(results) {
        let mut from = 0;
        for (at, len) in task.places(d) {
            o[at..at + len].copy_from_slice(&out[from..from + len]);
            from += len;
        }
    }
    let (dim, group) = (d.cache.head_dim, d.group());
    let (mut max, mut sum, mut part) =
        (vec![0f32; spans.len() * group], vec![0f64; spans.len() * group], vec![0f32; spans.len() * group * dim]);
    spans
        .par_iter()
        .zip(max.par_chunks_mut(group))
        .zip(sum.par_chunks_mut(group))
        .zip(part.par_chunks_mut(group * dim))
        .for_each_init(Scratch::default, |scratch, (((t, max), sum), o)| {
            run_span(t, &inputs, SpanOut { max, sum, o }, scratch);
        });
    for (at, run) in span_runs(&spans, d) {
        merge(&max, &sum, &part, run, group, &mut o[at..at + group * dim]);
    }
}

/// Attention of rows `first ..` (positions `positions`, all of sequence `seq`) for the
/// query heads of kv head g, as matrices: with R = rows·group queries and P keys (the
/// largest position plus one), S [R, P] = c·Q·Kᵀ, e = exp(S − row max) on each row's keys
/// u ≤ its position (0 beyond), O [R, D] = e·V / Σ e. Returns O as [rows, group, D]. With
/// `WIDE` (AVX-512) and a D they take, the products are the `x86` block kernels.
#[inline(always)]
fn block<'s, Q: FloatElement, T: FloatElement, const WIDE: bool>(
    task: &Block,
    inputs: &Inputs<'_, Q, T>,
    scratch: &'s mut BlockScratch,
) -> &'s [f32] {
    let Inputs { q, q_stride, k, v, d, .. } = *inputs;
    let (rows, g) = (task.rows.clone(), task.g);
    let (seq, first_row, positions) = (inputs.seqs[rows.start], rows.start, &inputs.positions[rows]);
    let (dim, group) = (d.cache.head_dim, d.group());
    let keys = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
    let r = positions.len() * group;
    // Rows up to a multiple of 8 (zeros), which the AVX-512 kernels compute and drop.
    let padded = r.next_multiple_of(8);
    let BlockScratch { q: q_block, k: k_block, v: v_block, kt, s, seen, sums, out } = scratch;
    let q_block = first(q_block, padded * dim);
    for (i, row) in q_block.chunks_exact_mut(dim).take(r).enumerate() {
        let at = (first_row + i / group) * q_stride + (g * group + i % group) * dim;
        widen_into(&q[at..at + dim], row);
    }
    q_block[r * dim..].fill(0.0);
    let (k_block, v_block) = (gather(k, d, seq, g, keys, k_block), gather(v, d, seq, g, keys, v_block));
    // Keys each row sees (its position + 1).
    seen.clear();
    seen.extend((0..padded).map(|i| positions.get(i / group).map_or(0, |&p| p as usize + 1)));
    #[cfg(target_arch = "x86_64")]
    let wide = WIDE && x86::takes::<f32>(dim);
    #[cfg(not(target_arch = "x86_64"))]
    let (wide, _) = (false, kt);
    let s = first(s, padded * keys);
    // The padding rows' weights, which the output kernel reads along with their group's.
    s[r * keys..].fill(0.0);
    let c = d.scale() as f32;
    if wide {
        // SAFETY: the CPU runs AVX-512 (WIDE); D is one the kernels take; the buffers are
        // [padded, D], [keys, D] and [padded, keys], `seen` ≤ keys.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::block_scores(q_block, k_block, dim, seen, c, kt, s)
        };
    } else {
        strided(r, keys, dim, (s, keys, 1), false, c, (q_block, dim, 1), (k_block, 1, dim), false);
    }
    sums.clear();
    for (row, &seen) in s.chunks_exact_mut(keys).zip(seen.iter()).take(r) {
        let max = max_f32(&row[..seen]);
        for x in &mut row[..seen] {
            *x = exp_nonpositive(*x - max);
        }
        sums.push(sum_f64_by(&row[..seen], f64::from));
        row[seen..].fill(0.0);
    }
    let out = first(out, padded * dim);
    if wide {
        // SAFETY: as above; e is [padded, keys] with zeros past each row's keys.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::block_weighted(s, v_block, dim, seen, out)
        };
    } else {
        strided(r, dim, keys, (out, dim, 1), false, 1.0, (s, keys, 1), (v_block, dim, 1), false);
    }
    let out = &mut out[..r * dim];
    for (row, &sum) in out.chunks_exact_mut(dim).zip(sums.iter()) {
        let inv = (1.0 / sum) as f32;
        row.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

/// Kv head g's rows of keys 0..keys of sequence `seq` in a cache (consecutive there), as f32
/// [keys, D] in `buf`.
#[inline(always)]
fn gather<'b, T: FloatElement>(
    cache: &[T],
    d: AttentionDims,
    seq: u32,
    g: usize,
    keys: usize,
    buf: &'b mut Vec<f32>,
) -> &'b [f32] {
    let at = d.cache.key_offset(seq, g, 0);
    let block = first(buf, keys * d.cache.head_dim);
    widen_into(&cache[at..at + block.len()], block);
    block
}

/// Row n's keys `keys` for the query heads of kv head g (module notes): per head, m, l and
/// o into `out`.
#[inline(always)]
fn span<Q: FloatElement, T: FloatElement, const WIDE: bool>(
    task: &Span,
    x: &Inputs<'_, Q, T>,
    out: SpanOut<'_>,
    scratch: &mut Scratch,
) {
    let (n, g, keys) = (task.n, task.g, task.keys.clone());
    let d = x.d;
    let (dim, group) = (d.cache.head_dim, d.group());
    assert!(!keys.is_empty() && keys.end <= x.positions[n] as usize + 1, "attention: span {keys:?} of row {n}");
    // Kv head g of this sequence from key keys.start, [len, D] one row after another.
    let start = d.cache.key_offset(x.seqs[n], g, keys.start as u32);
    let end = start + keys.len() * dim;
    let (k_rows, v_rows) = (&x.k[start..end], &x.v[start..end]);
    let Scratch { wide, scores, q, .. } = scratch;
    let (scores, q) = (first(scores, keys.len()), first(q, dim));
    if group == 1 || T::DTYPE == DType::F32 {
        heads::<Q, T, WIDE>(n, g, x, (k_rows, v_rows), true, (q, scores), out);
    } else {
        // The group's heads read the rows widened once (exactly, so the same results).
        // Every value of the scratch is written before it is read.
        let (k_wide, v_wide) = first(wide, 2 * keys.len() * dim).split_at_mut(keys.len() * dim);
        for (u, (kw, vw)) in k_wide.chunks_exact_mut(dim).zip(v_wide.chunks_exact_mut(dim)).enumerate() {
            prefetch_row(k_rows, (u + AHEAD) * dim, dim);
            prefetch_row(v_rows, (u + AHEAD) * dim, dim);
            widen_into(&k_rows[u * dim..(u + 1) * dim], kw);
            widen_into(&v_rows[u * dim..(u + 1) * dim], vw);
        }
        heads::<Q, f32, WIDE>(n, g, x, (k_wide, v_wide), false, (q, scores), out);
    }
}

/// [`span`]'s work per query head of kv head g over its keys and values `rows` ([keys, D]
/// each; prefetched as read with `fetch`).
#[inline(always)]
fn heads<Q: FloatElement, T: FloatElement, const WIDE: bool>(
    n: usize,
    g: usize,
    x: &Inputs<'_, Q, impl FloatElement>,
    (k_rows, v_rows): (&[T], &[T]),
    fetch: bool,
    (q_scaled, scores): (&mut [f32], &mut [f32]),
    out: SpanOut<'_>,
) {
    let d = x.d;
    let (dim, group) = (d.cache.head_dim, d.group());
    let scale = d.scale() as f32;
    for j in 0..group {
        let at = n * x.q_stride + (g * group + j) * dim;
        widen_into(&x.q[at..at + dim], q_scaled);
        q_scaled.iter_mut().for_each(|v| *v *= scale);
        scores_into::<T, WIDE>(q_scaled, k_rows, v_rows, fetch, scores);
        // p_u = e^{s_u - m} over all keys at once (the exponential has no branch, so this
        // vectorizes), then l = Σ p_u and o = Σ p_u·v_u.
        let max = max_f32(scores);
        scores.iter_mut().for_each(|s| *s = exp_nonpositive(*s - max));
        out.max[j] = max;
        out.sum[j] = sum_f64_by(scores, f64::from);
        weighted_rows::<T, WIDE>(scores, v_rows, &mut out.o[j * dim..(j + 1) * dim]);
    }
}

/// `out` [D] = Σ_u p_u·rows_u for rows [keys, D] one after another. Each
/// run of WIDTH columns is summed in registers over all keys, even and odd keys in two
/// separate sums (added at the end) so that consecutive keys do not wait on each other's
/// additions; the last columns (D not a multiple of WIDTH) in one plain sum.
/// With `WIDE` (AVX-512) and D a multiple of 32 up to 128, all of a key's columns at once
/// ([`x86::weighted`]; the same even and odd sums per column).
#[inline(always)]
fn weighted_rows<T: FloatElement, const WIDE: bool>(p: &[f32], rows: &[T], out: &mut [f32]) {
    const WIDTH: usize = 32;
    let dim = out.len();
    #[cfg(target_arch = "x86_64")]
    if WIDE && x86::takes::<T>(dim) && dim.is_multiple_of(WIDTH) {
        // SAFETY: the CPU runs AVX-512 (WIDE); p.len() rows of dim values lie within `rows`
        // (the caller's slice holds them all).
        unsafe { x86::weighted(p, rows, out) };
        return;
    }
    let whole = dim - dim % WIDTH;
    for c in (0..whole).step_by(WIDTH) {
        let (mut even, mut odd) = ([0f32; WIDTH], [0f32; WIDTH]);
        let mut keys = rows.chunks(dim).zip(p);
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
    for (row, &p_u) in rows.chunks(dim).zip(p) {
        for (acc, x) in out[whole..].iter_mut().zip(&row[whole..]) {
            *acc += p_u * wide(*x);
        }
    }
}

/// AVX-512 forms of a decode row's two loops over the keys ([`scores_into`], [`weighted_rows`])
/// for bf16 or f32 caches and D a multiple of 16 up to 128: the same products and additions
/// in the same order, so the same results, with fewer instructions per key.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::LANES;
    use crate::ops::infer_linear::simd::{transpose16, widen16};
    use crate::storage::FloatElement;
    use crate::DType;

    /// Whether these kernels take T and D.
    pub(super) fn takes<T: FloatElement>(dim: usize) -> bool {
        matches!(T::DTYPE, DType::BF16 | DType::F32) && dim.is_multiple_of(LANES) && (LANES..=128).contains(&dim)
    }

    /// 16 values of T (bf16 or f32) at `p` as f32, as `super::wide` widens them.
    #[inline(always)]
    unsafe fn load16<T: FloatElement>(p: *const T) -> __m512 {
        if T::DTYPE == DType::BF16 {
            widen16(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }

    /// out[u] = empty + tree(partials of key u) for the 16 keys at `keys` (rows of 16·q.len()
    /// values one after another),
    /// where key u's 16 partial sums are Σ_c q[c]·k_u[c] over its chunks c of 16 columns in
    /// order (a product, then an addition), and the tree adds lanes i and i + w for w = 8, 4,
    /// 2, 1 as [`super::scores_into`] does. The 16 trees run at once, two vectors into one at
    /// each level (level 1 pairs their 256-bit halves, level 2 their 128-bit quarters, levels
    /// 3 and 4 lanes within quarters), leaving key 4j + k in lane 4k + j.
    ///
    /// # Safety
    /// The CPU runs AVX-512F; 16 rows of 16·q.len() ≤ 128 values of T are readable at `keys`.
    #[inline(always)]
    pub(super) unsafe fn scores16<T: FloatElement>(q: &[[f32; LANES]], keys: *const T, empty: f32, out: &mut [f32]) {
        match q.len() {
            1 => scores16_n::<T, 1>(q, keys, empty, out),
            2 => scores16_n::<T, 2>(q, keys, empty, out),
            3 => scores16_n::<T, 3>(q, keys, empty, out),
            4 => scores16_n::<T, 4>(q, keys, empty, out),
            5 => scores16_n::<T, 5>(q, keys, empty, out),
            6 => scores16_n::<T, 6>(q, keys, empty, out),
            7 => scores16_n::<T, 7>(q, keys, empty, out),
            _ => scores16_n::<T, 8>(q, keys, empty, out),
        }
    }

    /// [`scores16`] for C = D/16 chunks, a number known when compiled so that a key's
    /// chunks unroll (with D read at run time, each key's chunks were a loop of their own
    /// and the 16 keys' sums waited on its branches).
    #[inline(always)]
    unsafe fn scores16_n<T: FloatElement, const C: usize>(
        q: &[[f32; LANES]],
        keys: *const T,
        empty: f32,
        out: &mut [f32],
    ) {
        assert!(out.len() == LANES && q.len() == C && C <= 8, "attention: 16 scores of at most 128 columns");
        let mut qv = [_mm512_setzero_ps(); C];
        for (v, c) in qv.iter_mut().zip(q) {
            *v = _mm512_loadu_ps(c.as_ptr());
        }
        let mut acc = [_mm512_setzero_ps(); LANES];
        for (u, a) in acc.iter_mut().enumerate() {
            let row = keys.add(u * C * LANES);
            for (c, &qc) in qv.iter().enumerate() {
                *a = _mm512_add_ps(*a, _mm512_mul_ps(qc, load16(row.add(c * LANES))));
            }
        }
        // Plain loops, not `std::array::from_fn`: its closures are compiled without this
        // function's AVX-512, and each intrinsic in them became a call.
        let mut l1 = [_mm512_setzero_ps(); 8];
        for (m, l) in l1.iter_mut().enumerate() {
            let (a, b) = (acc[2 * m], acc[2 * m + 1]);
            *l = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xee>(a, b));
        }
        let mut l2 = [_mm512_setzero_ps(); 4];
        for (m, l) in l2.iter_mut().enumerate() {
            let (c, d) = (l1[2 * m], l1[2 * m + 1]);
            *l = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(c, d), _mm512_shuffle_f32x4::<0xdd>(c, d));
        }
        let mut l3 = [_mm512_setzero_ps(); 2];
        for (m, l) in l3.iter_mut().enumerate() {
            let (g, h) = (l2[2 * m], l2[2 * m + 1]);
            *l = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(g, h), _mm512_shuffle_ps::<0xee>(g, h));
        }
        let l4 = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(l3[0], l3[1]), _mm512_shuffle_ps::<0xdd>(l3[0], l3[1]));
        // Key 4j + k from lane 4k + j.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let sums = _mm512_permutexvar_ps(order, l4);
        _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(_mm512_set1_ps(empty), sums));
    }

    /// `out` [D] = Σ_u p_u·rows_u as [`super::weighted_rows`] sums it (even and odd keys
    /// apart, each a product then an addition, the two sums added at the end), all D ≤ 128
    /// columns of a key at once.
    ///
    /// # Safety
    /// The CPU runs AVX-512F; D = out.len() a multiple of 16 up to 128; p.len() rows of D
    /// values lie within `rows`, one after another.
    #[inline(always)]
    pub(super) unsafe fn weighted<T: FloatElement>(p: &[f32], rows: &[T], out: &mut [f32]) {
        match out.len() / LANES {
            2 => weighted_n::<T, 2>(p, rows, out),
            4 => weighted_n::<T, 4>(p, rows, out),
            6 => weighted_n::<T, 6>(p, rows, out),
            _ => weighted_n::<T, 8>(p, rows, out),
        }
    }

    /// [`weighted`] for D = 16·V.
    #[inline(always)]
    unsafe fn weighted_n<T: FloatElement, const V: usize>(p: &[f32], rows: &[T], out: &mut [f32]) {
        let stride = V * LANES;
        assert!(out.len() == V * LANES, "attention: output of {} columns", V * LANES);
        if let Some(last) = p.len().checked_sub(1) {
            assert!((last + 1) * stride <= rows.len(), "attention: value rows");
        }
        let (mut even, mut odd) = ([_mm512_setzero_ps(); V], [_mm512_setzero_ps(); V]);
        let base = rows.as_ptr();
        let pairs = p.len() / 2;
        for k in 0..pairs {
            let (u0, u1) = (2 * k, 2 * k + 1);
            let (p0, p1) = (_mm512_set1_ps(p[u0]), _mm512_set1_ps(p[u1]));
            let (r0, r1) = (base.add(u0 * stride), base.add(u1 * stride));
            for j in 0..V {
                even[j] = _mm512_add_ps(even[j], _mm512_mul_ps(p0, load16(r0.add(j * LANES))));
                odd[j] = _mm512_add_ps(odd[j], _mm512_mul_ps(p1, load16(r1.add(j * LANES))));
            }
        }
        if p.len() % 2 == 1 {
            let u = p.len() - 1;
            let (p0, r0) = (_mm512_set1_ps(p[u]), base.add(u * stride));
            for (j, e) in even.iter_mut().enumerate() {
                *e = _mm512_add_ps(*e, _mm512_mul_ps(p0, load16(r0.add(j * LANES))));
            }
        }
        for j in 0..V {
            _mm512_storeu_ps(out.as_mut_ptr().add(j * LANES), _mm512_add_ps(even[j], odd[j]));
        }
    }
    /// S [R, keys] = c·Q·Kᵀ (the attention block's scores) for Q [R, D] (R a multiple of 8)
    /// and K [keys, D], f32, each 8 rows for the keys below their largest seen\[i\] (rounded
    /// up to 16, at most keys; the rest of a row is left as it is). K is transposed once
    /// into `kt` [D, keys rounded up to 16] (zeros past keys; `kt` is working space, its
    /// contents on entry do not matter); then 8 rows × 32 keys at a time (16 for the last 16),
    /// each column d a broadcast of q_i\[d\] and an FMA per K vector loaded for the 8 rows.
    ///
    /// # Safety
    /// The CPU runs AVX-512F; `takes::<f32>(dim)`; q.len() = R·D, k.len() = keys·D,
    /// s.len() = R·keys with keys = k.len() / D, seen.len() = R, every seen ≤ keys.
    #[inline(always)]
    pub(super) unsafe fn block_scores(
        q: &[f32],
        k: &[f32],
        dim: usize,
        seen: &[usize],
        c: f32,
        kt: &mut Vec<f32>,
        s: &mut [f32],
    ) {
        let (rows, keys) = (seen.len(), k.len() / dim);
        assert!(
            rows.is_multiple_of(8)
                && q.len() == rows * dim
                && s.len() == rows * keys
                && seen.iter().all(|&n| n <= keys),
            "attention: block scores sizes"
        );
        let stride = keys.next_multiple_of(LANES);
        let kt = super::first(kt, dim * stride);
        for row in kt.chunks_exact_mut(stride) {
            row[keys..].fill(0.0);
        }
        // 16×16 blocks transposed in registers (stored one element at a time, each key's
        // columns went to D cache lines: ~15% of the block's time); the last keys one by one.
        let whole = keys / LANES * LANES;
        for u0 in (0..whole).step_by(LANES) {
            for j0 in (0..dim).step_by(LANES) {
                let mut rows = [_mm512_setzero_ps(); LANES];
                for (i, r) in rows.iter_mut().enumerate() {
                    *r = _mm512_loadu_ps(k.as_ptr().add((u0 + i) * dim + j0));
                }
                for (i, &c) in transpose16(rows).iter().enumerate() {
                    _mm512_storeu_ps(kt.as_mut_ptr().add((j0 + i) * stride + u0), c);
                }
            }
        }
        for (u, key) in k.chunks_exact(dim).enumerate().skip(whole) {
            for (j, &x) in key.iter().enumerate() {
                kt[j * stride + u] = x;
            }
        }
        let scale = _mm512_set1_ps(c);
        for i0 in (0..rows).step_by(8) {
            let limit = seen[i0..i0 + 8].iter().copied().max().unwrap_or(0);
            let mut u0 = 0;
            while u0 < limit {
                let (qp, kp, row) = (q.as_ptr().add(i0 * dim), kt.as_ptr().add(u0), s.as_mut_ptr().add(i0 * keys));
                u0 += if u0 + LANES < limit {
                    scores_8xh::<2>(qp, kp, dim, stride, scale, row, keys, u0)
                } else {
                    scores_8xh::<1>(qp, kp, dim, stride, scale, row, keys, u0)
                };
            }
        }
    }

    /// acc\[r\]\[h\] = Σ_k a\[r·a_row + k\] · b\[k·b_row + 16h ..\]\[..16\] for k < steps:
    /// R rows × H vectors of sums in registers, each step H vector loads of b and, per row,
    /// a broadcast of a and H FMAs (the block kernels' products, k in order).
    ///
    /// # Safety
    /// The CPU runs AVX-512F; a and b are readable there.
    #[inline(always)]
    unsafe fn outer_sums<const R: usize, const H: usize>(
        a: *const f32,
        a_row: usize,
        b: *const f32,
        b_row: usize,
        steps: usize,
    ) -> [[__m512; H]; R] {
        let mut acc = [[_mm512_setzero_ps(); H]; R];
        for k in 0..steps {
            let mut bk = [_mm512_setzero_ps(); H];
            for (h, x) in bk.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b.add(k * b_row + h * LANES));
            }
            for (r, sums) in acc.iter_mut().enumerate() {
                let ak = _mm512_set1_ps(*a.add(r * a_row + k));
                for (x, &y) in sums.iter_mut().zip(&bk) {
                    *x = _mm512_fmadd_ps(ak, y, *x);
                }
            }
        }
        acc
    }

    /// [`block_scores`]' step: keys u0 .. u0 + 16·H of 8 rows (q rows at `qp`, D apart; Kᵀ's
    /// columns from `kp`, rows `stride` apart; S rows from `row`, `keys` apart), scaled by
    /// `scale`, the keys past `keys` not stored; returns the keys done (16·H).
    ///
    /// # Safety
    /// As [`block_scores`]: 8 rows of q and of S, and D rows of 16·H columns of Kᵀ, readable
    /// (S writable) there.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores_8xh<const H: usize>(
        qp: *const f32,
        kp: *const f32,
        dim: usize,
        stride: usize,
        scale: __m512,
        row: *mut f32,
        keys: usize,
        u0: usize,
    ) -> usize {
        let acc = outer_sums::<8, H>(qp, dim, kp, stride, dim);
        for (r, a) in acc.iter().enumerate() {
            for (h, &v) in a.iter().enumerate() {
                let at = u0 + h * LANES;
                let m: __mmask16 = if at + LANES <= keys { 0xffff } else { (1u16 << (keys - at)) - 1 };
                _mm512_mask_storeu_ps(row.add(r * keys + at), m, _mm512_mul_ps(v, scale));
            }
        }
        H * LANES
    }

    /// out [R, D] = e·V (the attention block's unnormalized output) for e [R, keys] (zeros
    /// past each row's seen keys, R a multiple of 8) and V [keys, D], f32: a few rows at a
    /// time (4 for D ≤ 80, else 2) with all their D sums in registers, each key u < the rows'
    /// largest seen a load of v_u and, per row, a broadcast of e_iu and an FMA per 16 columns.
    ///
    /// # Safety
    /// As [`block_scores`], with e for q, V for K and out.len() = R·D.
    #[inline(always)]
    pub(super) unsafe fn block_weighted(e: &[f32], v: &[f32], dim: usize, seen: &[usize], out: &mut [f32]) {
        match dim / LANES {
            1 => weighted_block::<1, 4>(e, v, seen, out),
            2 => weighted_block::<2, 4>(e, v, seen, out),
            3 => weighted_block::<3, 4>(e, v, seen, out),
            4 => weighted_block::<4, 4>(e, v, seen, out),
            5 => weighted_block::<5, 4>(e, v, seen, out),
            6 => weighted_block::<6, 2>(e, v, seen, out),
            7 => weighted_block::<7, 2>(e, v, seen, out),
            _ => weighted_block::<8, 2>(e, v, seen, out),
        }
    }

    /// [`block_weighted`] for D = 16·C, NR rows at a time.
    #[inline(always)]
    unsafe fn weighted_block<const C: usize, const NR: usize>(e: &[f32], v: &[f32], seen: &[usize], out: &mut [f32]) {
        let (rows, dim) = (seen.len(), C * LANES);
        let keys = v.len() / dim;
        assert!(
            rows.is_multiple_of(NR)
                && e.len() == rows * keys
                && out.len() == rows * dim
                && seen.iter().all(|&n| n <= keys),
            "attention: block output sizes"
        );
        for i0 in (0..rows).step_by(NR) {
            let limit = seen[i0..i0 + NR].iter().copied().max().unwrap_or(0);
            let acc = outer_sums::<NR, C>(e.as_ptr().add(i0 * keys), keys, v.as_ptr(), dim, limit);
            for (r, a) in acc.iter().enumerate() {
                let row = out.as_mut_ptr().add((i0 + r) * dim);
                for (j, &x) in a.iter().enumerate() {
                    _mm512_storeu_ps(row.add(j * LANES), x);
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::ops::kv_cache::CacheDims;
    use crate::testing::random_f32;

    /// Working space whose every value is NaN (as large as the tests' tasks need): a value
    /// read before it is written shows in the results.
    fn poisoned() -> Scratch {
        let nan = |n: usize| vec![f32::NAN; n];
        Scratch {
            wide: nan(1 << 16),
            scores: nan(1 << 10),
            q: nan(1 << 10),
            block: BlockScratch {
                q: nan(1 << 16),
                k: nan(1 << 16),
                v: nan(1 << 16),
                kt: nan(1 << 16),
                s: nan(1 << 16),
                seen: vec![usize::MAX; 1 << 10],
                sums: vec![f64::NAN; 1 << 10],
                out: nan(1 << 16),
            },
        }
    }

    /// The AVX-512 decode rows give the portable loops' results bit for bit: f32 and bf16
    /// caches, D from 16 to 128 and past it, key counts below, at and around multiples of 16
    /// (the rest of a run of 16 keys takes the portable loop).
    #[test]
    fn wide_decode_rows_equal_the_portable_ones_bit_for_bit() {
        if !crate::ops::infer_linear::cpu_fast::Isa::best().is_avx512() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        fn check<T: FloatElement>(dim: usize, positions: [u32; 2], seed: u64) {
            let cache = CacheDims { sequences: 2, capacity: 80, kv_heads: 2, head_dim: dim };
            let d = AttentionDims { cache, q_heads: 6 };
            let cast = |v: Vec<f32>| v.into_iter().map(T::from_f32).collect::<Vec<T>>();
            let q = cast(random_f32(2 * 6 * dim, 2.0, seed));
            let (k, v) = (cast(random_f32(cache.len(), 2.0, seed + 1)), cast(random_f32(cache.len(), 1.0, seed + 2)));
            let seqs = [1, 0];
            let inputs = Inputs { q: &q, q_stride: 6 * dim, k: &k, v: &v, d, seqs: &seqs, positions: &positions };
            let Tasks { blocks, spans } = tasks(d, &seqs, &positions);
            assert!(blocks.is_empty(), "two rows make spans, not blocks");
            let group = d.group();
            for task in &spans {
                let Span { n, g, ref keys } = *task;
                let run = |wide: bool| {
                    let (mut max, mut sum, mut o) = (vec![0f32; group], vec![0f64; group], vec![0f32; group * dim]);
                    let out = SpanOut { max: &mut max, sum: &mut sum, o: &mut o };
                    let mut scratch = poisoned();
                    if wide {
                        run_span(task, &inputs, out, &mut scratch)
                    } else {
                        span::<T, T, false>(task, &inputs, out, &mut scratch)
                    }
                    let mut bits: Vec<u64> = max.iter().chain(&o).map(|v| u64::from(v.to_bits())).collect();
                    bits.extend(sum.iter().map(|v| v.to_bits()));
                    bits
                };
                assert_eq!(run(true), run(false), "{} D {dim} row {n} kv head {g} keys {keys:?}", T::DTYPE);
            }
        }
        for (i, dim) in [16, 32, 48, 64, 96, 128, 144].into_iter().enumerate() {
            for (j, positions) in [[0, 14], [15, 16], [31, 47], [69, 79]].into_iter().enumerate() {
                let seed = (10 * i + j) as u64;
                check::<f32>(dim, positions, seed);
                check::<half::bf16>(dim, positions, seed);
            }
        }
    }

    /// The AVX-512 prefill blocks against the `gemm` ones (the portable path), atol 1e-5 +
    /// rtol 1e-4: f32 and bf16 caches, D from 16 to 128 and past it (that one takes the
    /// `gemm` path too), 3 and 1 query heads per kv head (row counts not a multiple of 8),
    /// a prompt of 9 and one of 70 rows (a block of 64 and one of 6), and a chunk at
    /// positions 37..50 attending to the 37 keys before it as well; both kernels in one
    /// working space, NaN at first, that each task leaves to the next.
    #[test]
    fn wide_blocks_match_the_portable_ones() {
        if !crate::ops::infer_linear::cpu_fast::Isa::best().is_avx512() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        fn check<T: FloatElement>(dim: usize, q_heads: usize, positions: &[u32], seed: u64) {
            let cache = CacheDims { sequences: 2, capacity: 80, kv_heads: 2, head_dim: dim };
            let d = AttentionDims { cache, q_heads };
            let n = positions.len();
            let cast = |v: Vec<f32>| v.into_iter().map(T::from_f32).collect::<Vec<T>>();
            let q = cast(random_f32(n * q_heads * dim, 2.0, seed));
            let (k, v) = (cast(random_f32(cache.len(), 2.0, seed + 1)), cast(random_f32(cache.len(), 1.0, seed + 2)));
            let seqs = vec![1; n];
            let inputs = Inputs { q: &q, q_stride: q_heads * dim, k: &k, v: &v, d, seqs: &seqs, positions };
            let Tasks { blocks, spans } = tasks(d, &seqs, positions);
            assert!(spans.is_empty() && !blocks.is_empty(), "a run of {n} rows makes blocks");
            // One scratch for all the blocks of both kernels, NaN where nothing was written yet.
            let mut scratch = poisoned();
            for task in &blocks {
                let got = run_block(task, &inputs, &mut scratch).to_vec();
                let want = block::<T, T, false>(task, &inputs, &mut scratch.block).to_vec();
                let what = format!("{} D {dim} Hq {q_heads} rows {:?} kv head {}", T::DTYPE, task.rows, task.g);
                crate::testing::assert_close(&what, &got, &want, 1e-5, 1e-4);
            }
        }
        let prompt = |range: std::ops::Range<u32>| range.collect::<Vec<u32>>();
        for (i, dim) in [16, 32, 48, 64, 80, 96, 128, 144].into_iter().enumerate() {
            for (j, q_heads) in [6, 2].into_iter().enumerate() {
                for (l, positions) in [prompt(0..9), prompt(0..70), prompt(37..50)].iter().enumerate() {
                    let seed = (100 * i + 10 * j + l) as u64;
                    check::<f32>(dim, q_heads, positions, seed);
                    check::<half::bf16>(dim, q_heads, positions, seed);
                }
            }
        }
    }
}
