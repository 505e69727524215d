//! A step on the CPU (a prefill, a batched decode step, any mix) as one team of threads
//! ([`super::team`]) instead of one thread-pool call per operation: at batch 1 a token's
//! matrices are small (576×576 in the default model) and waking a pool ~240 times per token
//! cost a fifth of the step; in a prefill, the per-operation tensors (allocation, page
//! faults, dtype conversions) cost about as much again.
//!
//! What does not change between steps — the weights held for reading and checked against
//! the config, the norms in f32, each member's rows of every linear — is a [`Plan`], made
//! once per generation (made per step, it cost ~3% of a decode step of the default model).
//!
//! It computes what the engine's operations compute (`InferModel::forward_rows`), with the
//! same CPU functions in the same order and the same rounding to the model's dtype after each
//! operation, so its logits equal theirs bit for bit.
//!
//! N tokens, dim D, heads Hq and Hkv of size hd, hidden F; per layer, with a sync of all
//! threads after each phase:
//!   1. h = rms_norm(x) [N, D] (each thread its own copy); the threads split the rows of
//!      q|k|v (by bytes read) and write qkv [N, (Hq + 2·Hkv)·hd]
//!   2. units (token, head): RoPE of q in place; RoPE of k, then k and v into the cache
//!   3. attention over the cache → a [N, Hq·hd], in the tasks of the operation's fast path
//!      (`kv_cache::cpu_fast::tasks`: blocks of a sequence's rows per kv head, dealt
//!      round-robin, and the other rows' spans of keys per kv head, in contiguous runs)
//!   4. the spans merged into a (every thread its own copy); rows of Wo split:
//!      x[:, rows] += a·Wo[rows]ᵀ
//!   5. h = rms_norm(x); indices of F split: m[:, i] = silu(h·Wg[i]) · (h·Wu[i]) [N, F]
//!   6. rows of Wd split: x[:, rows] += m·Wd[rows]ᵀ
//!
//! then logits [rows, vocab] = rms_norm(x[rows])·Headᵀ, the head's rows split.
//! A shared buffer is written in disjoint parts during a phase and read after the sync.

use std::marker::PhantomData;
use std::ops::Range;

use super::engine::KvCache;
use super::model::{InferLinear, InferModel};
use super::team::Member;
use crate::ops::infer_linear::cpu_fast::{compiled_for, split_ranges, Activations, Dest, Isa, Linear};
use crate::ops::infer_linear::{Held, Stored};
use crate::ops::kv_cache::{self, AttentionDims, CacheDims};
use crate::ops::{rms_norm, rope, swiglu};
use crate::{DType, Error, Result, Tensor};

/// A buffer the members of a team share: written in disjoint parts within a phase, read
/// after the sync that ends it.
struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    _buffer: PhantomData<&'a mut [T]>,
}

// SAFETY: the phases below write disjoint ranges and read a range only in a phase where no
// member writes it; `Member::sync` orders every write before every read of the next phase.
unsafe impl<T: Send> Sync for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    fn new(buffer: &'a mut [T]) -> Self {
        Shared { ptr: buffer.as_mut_ptr(), len: buffer.len(), _buffer: PhantomData }
    }

    /// Elements `range` for reading.
    ///
    /// # Safety
    /// No member writes them during this phase.
    unsafe fn read(&self, range: Range<usize>) -> &[T] {
        assert!(range.start <= range.end && range.end <= self.len, "shared buffer: {range:?} of {}", self.len);
        std::slice::from_raw_parts(self.ptr.add(range.start), range.len())
    }

    /// Elements `range` for writing.
    ///
    /// # Safety
    /// No other member reads or writes them during this phase.
    #[allow(clippy::mut_from_ref)]
    unsafe fn write(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len, "shared buffer: {range:?} of {}", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len())
    }

    /// The whole buffer for reading.
    ///
    /// # Safety
    /// No member writes it during this phase.
    unsafe fn all(&self) -> &[T] {
        self.read(0..self.len)
    }
}

/// `v` rounded to T, as an operation's output of that dtype is. For bf16 the rounding of
/// `half` (nearest, ties to even; a NaN stays NaN, made quiet) done without a branch, so
/// that the loops over it vectorize (half's own conversion branches on NaN, which kept the
/// rounding of a prefill's gate and up outputs scalar: ~7% of the step).
#[inline(always)]
fn round<T: Stored>(v: f32) -> f32 {
    if T::DTYPE != DType::BF16 {
        return T::from_f32(v).to_f32();
    }
    let x = v.to_bits();
    let nan = x & 0x7fff_ffff > 0x7f80_0000;
    let nearest = x.wrapping_add(0x7fff + (x >> 16 & 1)) & 0xffff_0000;
    f32::from_bits(if nan { (x | 0x0040_0000) & 0xffff_0000 } else { nearest })
}

/// The f32 values of a CPU tensor of element type T.
fn host<T: Stored>(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.read()?.cpu::<T>()?.iter().map(|v| v.to_f32()).collect())
}

fn hold(linear: &InferLinear) -> Result<Held<'_>> {
    match linear {
        InferLinear::Dense(w) => Held::dense(w),
        InferLinear::Sparse(w) => Held::sparse(w),
    }
}

/// One layer's weights as the kernels read them.
struct LayerWeights<'a, T> {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    /// q, k, v, o, gate, up, down.
    linears: [Linear<'a, T>; 7],
}

/// Each member's rows of one layer's linears (parts of about equal bytes).
struct LayerParts {
    q: Vec<Range<usize>>,
    k: Vec<Range<usize>>,
    v: Vec<Range<usize>>,
    o: Vec<Range<usize>>,
    /// Indices of the hidden layer: rows of gate and of up.
    mlp: Vec<Range<usize>>,
    down: Vec<Range<usize>>,
}

impl LayerParts {
    fn new<T: Stored>(w: &[Linear<'_, T>; 7], members: usize) -> Self {
        let [q, k, v, o, gate, up, down] = w;
        let mlp = split_ranges(gate.rows(), |r| gate.bytes_before(r) + up.bytes_before(r), members);
        LayerParts {
            q: parts(q, members),
            k: parts(k, members),
            v: parts(v, members),
            o: parts(o, members),
            mlp: pad(mlp, members),
            down: parts(down, members),
        }
    }
}

/// A weight's rows in one part of about equal bytes per member.
fn parts<T: Stored>(w: &Linear<'_, T>, members: usize) -> Vec<Range<usize>> {
    pad(split_ranges(w.rows(), |r| w.bytes_before(r), members), members)
}

/// `parts` followed by empty ranges up to `members` entries.
fn pad(mut parts: Vec<Range<usize>>, members: usize) -> Vec<Range<usize>> {
    let end = parts.last().map_or(0, |r| r.end);
    parts.resize(members, end..end);
    parts
}

/// h [N, D] = rms_norm(x) [N, D] rounded to T (`eps` as the operation takes it, f32).
#[inline(always)]
fn norm<T: Stored>(x: &[f32], w: &[f32], eps: f32, dim: usize, h: &mut Vec<f32>) {
    h.resize(x.len(), 0.0);
    rms_norm::cpu::forward(x, w, eps as f64, dim, h);
    h.iter_mut().for_each(|v| *v = round::<T>(*v));
}

/// Rows `rows` of y = x·Wᵀ into `out` [N, rows.len()] (unrounded).
fn product<T: Stored>(
    w: &Linear<'_, T>,
    isa: Isa,
    x: &Activations,
    rows: Range<usize>,
    out: &mut Vec<f32>,
) -> Result<()> {
    out.resize(rows.len() * x.tokens(), 0.0);
    let n = rows.len();
    w.compute(isa, x, rows, Dest::token_major(out, n, x.tokens()))
}

/// dst[t, offset + j] = round(block[t, j]) for block [N, cols] and dst [N, width].
///
/// # Safety
/// Columns offset .. offset + cols of every row of `dst` are this member's in this phase.
#[inline(always)]
unsafe fn write_columns<T: Stored>(block: &[f32], tokens: usize, dst: &Shared<'_, f32>, width: usize, offset: usize) {
    let cols = block.len() / tokens.max(1);
    for (t, src) in block.chunks_exact(cols.max(1)).enumerate().take(tokens) {
        let row = dst.write(t * width + offset..t * width + offset + cols);
        for (d, &v) in row.iter_mut().zip(src) {
            *d = round::<T>(v);
        }
    }
}

/// x[t, rows] = round(x[t, rows] + round(y)) for y = a·W[rows]ᵀ (a residual branch).
///
/// # Safety
/// Columns `rows` of x are this member's in this phase.
#[inline(always)]
unsafe fn add_rows<T: Stored>(
    w: &Linear<'_, T>,
    isa: Isa,
    a: &Activations,
    rows: Range<usize>,
    out: &mut Vec<f32>,
    x: &Shared<'_, f32>,
    dim: usize,
) -> Result<()> {
    product(w, isa, a, rows.clone(), out)?;
    for (t, y) in out.chunks_exact(rows.len().max(1)).enumerate().take(a.tokens()) {
        let row = x.write(t * dim + rows.start..t * dim + rows.end);
        for (d, &v) in row.iter_mut().zip(y) {
            *d = round::<T>(*d + round::<T>(v));
        }
    }
    Ok(())
}

/// Every weight of a model held for reading, from which a [`Plan`] is built: held for as
/// long as a generation runs, so that its steps do not take them again.
pub(super) struct Holds<'m> {
    /// q, k, v, o, gate, up, down of each layer.
    layers: Vec<[Held<'m>; 7]>,
    head: Held<'m>,
}

impl<'m> Holds<'m> {
    pub(super) fn new(model: &'m InferModel) -> Result<Self> {
        let layers = model
            .layers
            .iter()
            .map(|l| {
                let [a, b, c, d, e, f, g] = &l.linears;
                Ok([hold(a)?, hold(b)?, hold(c)?, hold(d)?, hold(e)?, hold(f)?, hold(g)?])
            })
            .collect::<Result<_>>()?;
        Ok(Holds { layers, head: Held::dense(model.head())? })
    }
}

/// What every step of a generation reads the same way: the weights as the kernels read
/// them (checked against the config once), the norms in f32, and each member's rows of
/// every linear.
pub(super) struct Plan<'h, T> {
    model: &'h InferModel,
    layers: Vec<LayerWeights<'h, T>>,
    head: Linear<'h, T>,
    final_norm: Vec<f32>,
    members: usize,
    layer_parts: Vec<LayerParts>,
    head_parts: Vec<Range<usize>>,
}

impl<'h, T: Stored> Plan<'h, T> {
    /// The plan of `model` (whose weights `holds` holds) for the current rayon pool's
    /// thread count.
    pub(super) fn new(model: &'h InferModel, holds: &'h Holds<'_>) -> Result<Self> {
        let c = &model.config;
        let (dim, hidden, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q_dim, kv_dim) = (c.num_attention_heads * c.head_dim(), c.num_key_value_heads * c.head_dim());
        let head = holds.head.linear::<T>()?;
        let shapes =
            [(q_dim, dim), (kv_dim, dim), (kv_dim, dim), (dim, q_dim), (hidden, dim), (hidden, dim), (dim, hidden)];
        if holds.layers.len() != model.layers.len() {
            return Err(Error::invalid("the held weights are not the model's"));
        }
        let mut layers = Vec::with_capacity(holds.layers.len());
        for (l, (layer, h)) in model.layers.iter().zip(&holds.layers).enumerate() {
            let [a, b, c, d, e, f, g] = h;
            let linears = [a.linear()?, b.linear()?, c.linear()?, d.linear()?, e.linear()?, f.linear()?, g.linear()?];
            for (i, (w, want)) in linears.iter().zip(shapes).enumerate() {
                if (w.rows(), w.cols()) != want {
                    return Err(Error::invalid(format!(
                        "layer {l}: linear {i} is {}x{}, the config makes it {}x{}",
                        w.rows(),
                        w.cols(),
                        want.0,
                        want.1
                    )));
                }
            }
            layers.push(LayerWeights {
                input_norm: host::<T>(&layer.input_norm)?,
                post_norm: host::<T>(&layer.post_norm)?,
                linears,
            });
        }
        if (head.rows(), head.cols()) != (vocab, dim) {
            return Err(Error::invalid(format!("the LM head is {}x{}, not {vocab}x{dim}", head.rows(), head.cols())));
        }
        let members = rayon::current_num_threads().max(1);
        let layer_parts = layers.iter().map(|w| LayerParts::new(&w.linears, members)).collect();
        let head_parts = parts(&head, members);
        Ok(Plan { model, layers, head, final_norm: host::<T>(&model.norm)?, members, layer_parts, head_parts })
    }

    /// The logits [rows.len(), vocab] (f32 values of the model's dtype) of one step:
    /// `tokens[i]` of sequence `seqs[i]` at `positions[i]` (distinct slots of `cache`,
    /// checked by the caller), its keys and values written into `cache`; `rows` index the
    /// tokens.
    pub(super) fn step(
        &self,
        cache: &KvCache,
        seqs: &[u32],
        positions: &[u32],
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Vec<f32>> {
        let Plan { model, layers, head, final_norm, members, layer_parts, head_parts } = self;
        let c = &model.config;
        let n = tokens.len();
        let (dim, hidden, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let (q_dim, kv_dim) = (hq * hd, hkv * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let eps = c.rms_norm_eps as f32;
        let inv_freq = c.rope_inv_freq();
        let (isa, dtype) = (Isa::best(), model.dtype());
        let members = *members;

        // The caches [B, Hkv, S, hd] of every layer, written in place.
        let cache_dims =
            CacheDims { sequences: cache.batch(), capacity: cache.capacity(), kv_heads: hkv, head_dim: hd };
        let att = AttentionDims { cache: cache_dims, q_heads: hq };
        let kv_cache::cpu_fast::Tasks { blocks: attention_blocks, spans } =
            kv_cache::cpu_fast::tasks(att, seqs, positions);
        let span_runs = kv_cache::cpu_fast::span_runs(&spans, att);
        let group = att.group();
        // RoPE's (sin, cos) for each token's position, [N, hd/2].
        let half = hd / 2;
        let mut tables = Vec::with_capacity(n * half);
        let mut table = Vec::with_capacity(half);
        for &p in positions {
            rope::cpu::angles(p, &inv_freq, &mut table);
            tables.extend_from_slice(&table);
        }
        let (keys, values) = cache.tensors();
        let mut key_guards = keys.iter().map(Tensor::write).collect::<Result<Vec<_>>>()?;
        let mut value_guards = values.iter().map(Tensor::write).collect::<Result<Vec<_>>>()?;
        let k_caches: Vec<Shared<'_, T>> =
            key_guards.iter_mut().map(|g| Ok(Shared::new(g.cpu_mut::<T>()?))).collect::<Result<_>>()?;
        let v_caches: Vec<Shared<'_, T>> =
            value_guards.iter_mut().map(|g| Ok(Shared::new(g.cpu_mut::<T>()?))).collect::<Result<_>>()?;
        if k_caches.iter().chain(&v_caches).any(|s| s.len != cache_dims.len()) || k_caches.len() != layers.len() {
            return Err(Error::invalid("the KV cache does not match the model"));
        }

        // x [N, D]: the embedding rows.
        let mut x = Vec::with_capacity(n * dim);
        {
            let embed = model.embed.read()?;
            let embed = embed.cpu::<T>()?;
            for &t in tokens {
                let row = embed
                    .get(t as usize * dim..(t as usize + 1) * dim)
                    .ok_or_else(|| Error::invalid(format!("token id {t} is outside the vocabulary of {vocab}")))?;
                x.extend(row.iter().map(|v| v.to_f32()));
            }
        }
        let (mut qkv, mut a, mut m) =
            (vec![f32::NAN; n * qkv_dim], vec![f32::NAN; n * q_dim], vec![f32::NAN; n * hidden]);
        // The spans' results: m and l per (span, head of its group), o per (span, head) [D].
        let (mut span_max, mut span_sum, mut span_o) = (
            vec![f32::NAN; spans.len() * group],
            vec![f64::NAN; spans.len() * group],
            vec![f32::NAN; spans.len() * group * hd],
        );
        let mut logits = vec![f32::NAN; rows.len() * vocab];
        let (x, qkv_s, a_s, m_s, logits_s) = (
            Shared::new(&mut x),
            Shared::new(&mut qkv),
            Shared::new(&mut a),
            Shared::new(&mut m),
            Shared::new(&mut logits),
        );
        let (max_s, sum_s, span_o_s) =
            (Shared::new(&mut span_max), Shared::new(&mut span_sum), Shared::new(&mut span_o));

        // A member's work compiled for the best instruction set (`compiled_for`): its own
        // loops (norms, rounding, residual adds) ran with SSE2 only, ~10% of a prefill.
        model.crew.run(members, |me: &Member<'_>| {
            compiled_for(
                isa,
                #[inline(always)]
                |_| {
                    let i = me.index();
                    let (mut h, mut out) = (Vec::new(), Vec::new());
                    let (mut gate, mut up, mut rotated) = (Vec::new(), Vec::new(), vec![0f32; hd]);
                    let mut act = Activations::new(isa, dtype, &[], 0, 0);
                    // This member's copy of a with the spans' rows merged in.
                    let (mut a_merged, mut merged) = (Vec::new(), vec![0f32; group * hd]);
                    let mut attention_scratch = kv_cache::cpu_fast::Scratch::default();
                    // SAFETY (every block below): each phase writes only this member's part of a shared
                    // buffer — its rows of a linear, or its units (token, head) — and reads buffers that
                    // no member writes in that phase; a sync ends every phase.
                    for (l, w) in layers.iter().enumerate() {
                        let [wq, wk, wv, wo, wg, wu, wd] = &w.linears;
                        let p = &layer_parts[l];
                        // 1. h = rms_norm(x); this member's rows of q, k and v.
                        norm::<T>(unsafe { x.all() }, &w.input_norm, eps, dim, &mut h);
                        act.fill(isa, dtype, &h, n, dim);
                        for (wt, part, base) in [(wq, &p.q[i], 0), (wk, &p.k[i], q_dim), (wv, &p.v[i], q_dim + kv_dim)]
                        {
                            product(wt, isa, &act, part.clone(), &mut out)?;
                            unsafe { write_columns::<T>(&out, n, &qkv_s, qkv_dim, base + part.start) };
                        }
                        me.sync()?;
                        // 2. RoPE of q in place; RoPE of k, and k and v into the cache.
                        for unit in me.share(n * (hq + hkv)) {
                            let (t, head) = (unit / (hq + hkv), unit % (hq + hkv));
                            let at = t * qkv_dim + head * hd;
                            let src = unsafe { qkv_s.write(at..at + hd) };
                            rope::cpu::rotate_head(src, &tables[t * half..(t + 1) * half], false, &mut rotated);
                            for (s, &r) in src.iter_mut().zip(&rotated) {
                                *s = round::<T>(r);
                            }
                            if let Some(g) = head.checked_sub(hq) {
                                let slot = cache_dims.key_offset(seqs[t], g, positions[t]);
                                let v_at = t * qkv_dim + q_dim + kv_dim + g * hd;
                                let v_row = unsafe { qkv_s.read(v_at..v_at + hd) };
                                let (kc, vc) =
                                    unsafe { (k_caches[l].write(slot..slot + hd), v_caches[l].write(slot..slot + hd)) };
                                for ((kd, vd), (&k, &v)) in kc.iter_mut().zip(vc.iter_mut()).zip(src.iter().zip(v_row))
                                {
                                    (*kd, *vd) = (T::from_f32(k), T::from_f32(v));
                                }
                            }
                        }
                        me.sync()?;
                        // 3. Attention: this member's tasks: blocks of a sequence's rows per kv head,
                        //    dealt round-robin as later blocks see more keys, and one contiguous run of
                        //    the spans (a row's keys per kv head in parts of equal size), whose results
                        //    each member merges in the next phase.
                        let (kc, vc) = unsafe { (k_caches[l].all(), v_caches[l].all()) };
                        let q = unsafe { qkv_s.all() };
                        let inputs =
                            kv_cache::cpu_fast::Inputs { q, q_stride: qkv_dim, k: kc, v: vc, d: att, seqs, positions };
                        for task in attention_blocks.iter().skip(i).step_by(me.count()) {
                            let o = kv_cache::cpu_fast::run_block(task, &inputs, &mut attention_scratch);
                            let mut from = 0;
                            for (at, len) in task.places(att) {
                                for (d, &v) in unsafe { a_s.write(at..at + len) }.iter_mut().zip(&o[from..from + len]) {
                                    *d = round::<T>(v);
                                }
                                from += len;
                            }
                        }
                        for s in me.share(spans.len()) {
                            let out = unsafe {
                                kv_cache::cpu_fast::SpanOut {
                                    max: max_s.write(s * group..(s + 1) * group),
                                    sum: sum_s.write(s * group..(s + 1) * group),
                                    o: span_o_s.write(s * group * hd..(s + 1) * group * hd),
                                }
                            };
                            kv_cache::cpu_fast::run_span(&spans[s], &inputs, out, &mut attention_scratch);
                        }
                        me.sync()?;
                        // 4. x += a·Woᵀ on this member's rows, a with the spans merged (each member
                        //    merges them all into its own copy).
                        let a_all: &[f32] = if span_runs.is_empty() {
                            unsafe { a_s.all() }
                        } else {
                            a_merged.clear();
                            a_merged.extend_from_slice(unsafe { a_s.all() });
                            let (max, sum, o) = unsafe { (max_s.all(), sum_s.all(), span_o_s.all()) };
                            for (at, run) in &span_runs {
                                kv_cache::cpu_fast::merge(max, sum, o, run.clone(), group, &mut merged);
                                for (d, &v) in a_merged[*at..*at + group * hd].iter_mut().zip(&merged) {
                                    *d = round::<T>(v);
                                }
                            }
                            &a_merged
                        };
                        act.fill(isa, dtype, a_all, n, q_dim);
                        unsafe { add_rows::<T>(wo, isa, &act, p.o[i].clone(), &mut out, &x, dim) }?;
                        me.sync()?;
                        // 5. h = rms_norm(x); m = silu(h·Wgᵀ)·(h·Wuᵀ) on this member's indices.
                        norm::<T>(unsafe { x.all() }, &w.post_norm, eps, dim, &mut h);
                        act.fill(isa, dtype, &h, n, dim);
                        let part = p.mlp[i].clone();
                        product(wg, isa, &act, part.clone(), &mut gate)?;
                        product(wu, isa, &act, part.clone(), &mut up)?;
                        // Two loops, not one over a chain: a chain's loop does not vectorize.
                        gate.iter_mut().for_each(|v| *v = round::<T>(*v));
                        up.iter_mut().for_each(|v| *v = round::<T>(*v));
                        out.resize(up.len(), 0.0);
                        swiglu::cpu_fast::forward(&gate, &up, &mut out);
                        unsafe { write_columns::<T>(&out, n, &m_s, hidden, part.start) };
                        me.sync()?;
                        // 6. x += m·Wdᵀ on this member's rows.
                        act.fill(isa, dtype, unsafe { m_s.all() }, n, hidden);
                        unsafe { add_rows::<T>(wd, isa, &act, p.down[i].clone(), &mut out, &x, dim) }?;
                        me.sync()?;
                    }
                    // The logits of the rows asked for; this member's rows of the head.
                    let x = unsafe { x.all() };
                    let picked: Vec<f32> =
                        rows.iter().flat_map(|&r| x[r * dim..(r + 1) * dim].iter().copied()).collect();
                    norm::<T>(&picked, final_norm, eps, dim, &mut h);
                    act.fill(isa, dtype, &h, rows.len(), dim);
                    let part = head_parts[i].clone();
                    product(head, isa, &act, part.clone(), &mut out)?;
                    unsafe { write_columns::<T>(&out, rows.len(), &logits_s, vocab, part.start) };
                    Ok(())
                },
            )
        })?;
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::SparseMode;
    use crate::model::llama::{Llama, LlamaConfig};
    use crate::prune::select::Pattern;
    use crate::testing::{awkward_llama, magnitude_pruned};
    use crate::{DType, Device};

    /// The branch-free bf16 rounding against `half`'s, bit for bit: ties either way, the
    /// largest finite values (rounding to infinity), infinities, quiet and signalling NaNs of
    /// both signs, denormals, and a spread of every other pattern.
    #[test]
    fn bf16_rounding_is_halfs() {
        let half_round = |x: u32| half::bf16::from_f32(f32::from_bits(x)).to_f32().to_bits();
        let mut patterns: Vec<u32> = (0..=u32::MAX / 7919).map(|i| i * 7919).collect();
        for high in (0..=0xffffu32).step_by(7) {
            for low in [0, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                patterns.push(high << 16 | low);
            }
        }
        patterns.extend([0x7f7f_ffff, 0xff7f_ffff, 0x7f80_0000, 0xff80_0000, 0x7f80_0001, 0xffc0_0000, 0x7fff_ffff]);
        for x in patterns {
            let got = round::<half::bf16>(f32::from_bits(x)).to_bits();
            assert_eq!(got, half_round(x), "bits {x:#010x}: {got:#010x} against half's {:#010x}", half_round(x));
        }
    }

    /// The tiny config with room for the 70-token prompt.
    fn long_tiny() -> LlamaConfig {
        LlamaConfig { max_position_embeddings: 128, ..LlamaConfig::tiny() }
    }

    /// The same steps through this path and through the operations, each in its own cache:
    /// prompts of 3, 1 and 70 tokens of three sequences (the last one in two attention
    /// blocks), batched decode steps over the three at different positions, a 9-token chunk
    /// of one sequence (a block) and a step of two tokens of one sequence. Logits equal bit
    /// for bit, and so do the caches.
    fn same_as_operations(model: &InferModel, threads: usize, what: &str) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let vocab = model.config.vocab_size as u32;
            let (mut ours, mut ops) = (model.new_cache(3, 96).unwrap(), model.new_cache(3, 96).unwrap());
            let ids = |n: u32| (0..n).map(|i| i * 7 + 3).collect::<Vec<u32>>();
            let steps: Vec<(Vec<u32>, Vec<u32>, Vec<usize>)> = vec![
                (vec![0, 0, 0], vec![5, 1, 60], vec![2]),
                (vec![1], vec![9], vec![0]),
                (vec![2; 70], ids(70), vec![0, 69, 33]),
                (vec![0, 1, 2], vec![11, 12, 13], vec![0, 1, 2]),
                (vec![2, 0], vec![4, 8], vec![1, 0]),
                (vec![1; 9], ids(9), (0..9).collect()),
                (vec![1, 1], vec![30, 31], vec![0, 1]),
                (vec![0], vec![vocab - 1], vec![0]),
            ];
            for (i, (seqs, tokens, rows)) in steps.iter().enumerate() {
                let tokens: &[u32] = &tokens.iter().map(|t| t % vocab).collect::<Vec<_>>();
                let positions: Vec<u32> = {
                    let mut next: Vec<u32> = (0..3).map(|s| ops.len(s) as u32).collect();
                    seqs.iter()
                        .map(|&s| {
                            next[s as usize] += 1;
                            next[s as usize] - 1
                        })
                        .collect()
                };
                let want = model.forward_rows(&ops, seqs, &positions, tokens, rows).unwrap().to_f32_vec().unwrap();
                ops.advance(seqs);
                let got = crate::with_compute_type!(model.dtype(), "test", T => {
                    let holds = Holds::new(model).unwrap();
                    Plan::<T>::new(model, &holds).unwrap().step(&ours, seqs, &positions, tokens, rows)
                })
                .unwrap();
                ours.advance(seqs);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{what}, {threads} threads, step {i}: logits differ");
            }
            let (ko, vo) = ops.tensors();
            let (kt, vt) = ours.tensors();
            for (a, b) in ko.iter().chain(vo).zip(kt.iter().chain(vt)) {
                assert_eq!(a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap(), "{what}: caches differ");
            }
        });
    }

    #[test]
    fn equals_the_operations_bit_for_bit() {
        for (name, config) in [("tiny", long_tiny()), ("awkward", awkward_llama())] {
            for dtype in [DType::F32, DType::BF16] {
                let base = Llama::random(&config, dtype, &Device::cpu(), 5).unwrap();
                let uneven = magnitude_pruned(&base, &[0], Pattern::Unstructured(0.5)).unwrap();
                let uneven = magnitude_pruned(&uneven, &[1], Pattern::Unstructured(0.7)).unwrap();
                let mut models = vec![("dense", base.clone(), SparseMode::Off), ("bitmask", uneven, SparseMode::Auto)];
                if config.intermediate_size % 4 == 0 {
                    let nm = magnitude_pruned(&base, &[0, 1], Pattern::NM { n: 2, m: 4 }).unwrap();
                    models.push(("2:4", nm, SparseMode::Auto));
                }
                for (form, model, mode) in models {
                    let engine = InferModel::new(model, mode).unwrap();
                    assert!(engine.choices.iter().any(|c| c.format == form), "{name} {dtype}: no {form} linear");
                    for threads in [1, 2, 3] {
                        same_as_operations(&engine, threads, &format!("{name} {dtype} {form}"));
                    }
                }
            }
        }
    }
}
