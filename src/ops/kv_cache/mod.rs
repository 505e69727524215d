//! The KV cache of generation: keys and values of past tokens kept per sequence, and attention
//! of new query rows over them. No gradient (inference only).
//! cache, k_cache, v_cache: [B, Hkv, S, D] (B sequences, capacity S positions each; a kv
//! head's keys of one sequence are one run of S·D elements); rows: [N, Hkv, D];
//! q, o: [N, Hq, D] with Hkv dividing Hq; seqs, positions: \[N\] (host u32).
//!   \[`write`\]:     cache[seqs\[n\], g, positions\[n\]] = rows\[n, g\] for every g, in place
//!   [`attention`]: query head h of row n reads kv head g = h / (Hq / Hkv) (Hugging Face
//!                  `repeat_kv` order) of sequence b = seqs\[n\] at keys u = 0 ..= positions\[n\];
//!                  with c = 1/sqrt(D):
//!                  s_u = c · q_nh·k[b, g, u],  o_nh = Σ_u softmax(s)_u · v[b, g, u]
//! This is \[`crate::ops::attention`\]'s causal softmax, with the keys taken from the cache: a
//! prefill writes the prompt's keys and values (positions p0 .. p0 + N − 1 of one sequence) and
//! then attends with those positions; a batched decode step writes and attends one row per
//! sequence. Softmax in f32 (f64 in the reference `cpu.rs`); o in q's dtype. The CUDA kernel
//! takes D ≤ [`cuda::MAX_HEAD_DIM`]; the CPU any D.

pub mod cpu;
pub mod cpu_fast;
pub mod cuda;

pub use cpu::{AttentionDims, CacheDims};

use crate::ops::{cuda_device, cuda_tensor, expect_float, expect_same};
use crate::{with_compute_type, Device, Error, Result, Shape, Tensor};

/// The sizes of a cache tensor [B, Hkv, S, D] (Hkv, D > 0).
fn cache_dims(op: &'static str, cache: &Tensor) -> Result<CacheDims> {
    let [sequences, kv_heads, capacity, head_dim] = cache.shape().dims_n::<4>(op)?;
    if kv_heads == 0 || head_dim == 0 {
        return Err(Error::BadShape { op, shape: cache.shape().clone(), msg: "no heads or head dimension 0".into() });
    }
    Ok(CacheDims { sequences, capacity, kv_heads, head_dim })
}

/// Error unless seqs and positions name one slot per row of `rows` ([N, ..]).
fn expect_rows(op: &'static str, rows: &Shape, seqs: &[u32], positions: &[u32]) -> Result<()> {
    let n = rows.dims().first().copied().unwrap_or(0);
    if seqs.len() != n || positions.len() != n {
        return Err(Error::invalid(format!(
            "{op}: {rows} has {n} rows, given {} sequence ids and {} positions",
            seqs.len(),
            positions.len()
        )));
    }
    Ok(())
}

/// Error unless seqs and positions have one length and every (seqs[n], positions[n]) is a slot
/// of the cache (used by the CUDA launchers too, before they touch memory).
pub(crate) fn check_indices(op: &str, d: CacheDims, seqs: &[u32], positions: &[u32]) -> Result<()> {
    if seqs.len() != positions.len() {
        return Err(Error::invalid(format!("{op}: {} sequence ids but {} positions", seqs.len(), positions.len())));
    }
    let cache = Shape::new(d.shape());
    for (n, (&seq, &pos)) in seqs.iter().zip(positions).enumerate() {
        if seq as usize >= d.sequences {
            return Err(Error::invalid(format!(
                "{op}: row {n} names sequence {seq}, the cache {cache} holds {}",
                d.sequences
            )));
        }
        if pos as usize >= d.capacity {
            return Err(Error::invalid(format!(
                "{op}: row {n} is at position {pos}, the cache {cache} holds {} per sequence",
                d.capacity
            )));
        }
    }
    Ok(())
}

/// Writes `rows` [N, Hkv, D] into `cache` [B, Hkv, S, D] in place: row n at sequence
/// `seqs[n]`, position `positions[n]` of every kv head (distinct slots; same dtype and
/// device).
pub fn write(cache: &Tensor, rows: &Tensor, seqs: &[u32], positions: &[u32]) -> Result<()> {
    const OP: &str = "kv_cache::write";
    expect_float(OP, cache)?;
    expect_same(OP, &[cache, rows])?;
    let d = cache_dims(OP, cache)?;
    let [_, heads, dim] = rows.shape().dims_n::<3>(OP)?;
    if (heads, dim) != (d.kv_heads, d.head_dim) {
        return Err(Error::ShapeMismatch { op: OP, lhs: cache.shape().clone(), rhs: rows.shape().clone() });
    }
    expect_rows(OP, rows.shape(), seqs, positions)?;
    check_indices(OP, d, seqs, positions)?;
    let mut slots: Vec<(u32, u32)> = seqs.iter().copied().zip(positions.iter().copied()).collect();
    slots.sort_unstable();
    if let Some(w) = slots.windows(2).find(|w| w[0] == w[1]) {
        let (seq, pos) = w[0];
        return Err(Error::invalid(format!("{OP}: two rows write sequence {seq} at position {pos}")));
    }
    if cache.same_storage(rows) {
        return Err(Error::invalid(format!("{OP}: the rows share the cache's storage")));
    }
    let src = rows.read()?;
    let mut dst = cache.write()?;
    match cache.device() {
        Device::Cpu(_) => with_compute_type!(cache.dtype(), OP, T => {
            cpu::write(dst.cpu_mut::<T>()?, src.cpu::<T>()?, d, seqs, positions);
            Ok(())
        }),
        Device::Cuda(_) => with_compute_type!(cache.dtype(), OP, T => {
            cuda::write::<T>(cuda_device(cache)?, dst.cuda_mut()?, src.cuda()?, d, seqs, positions)
        }),
    }
}

/// Attention of `q` [N, Hq, D] over the caches [B, Hkv, S, D]: row n sees keys
/// 0 ..= `positions[n]` of sequence `seqs[n]` (written before the call). Returns o [N, Hq, D]
/// in q's dtype.
pub fn attention(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, seqs: &[u32], positions: &[u32]) -> Result<Tensor> {
    const OP: &str = "kv_cache::attention";
    expect_float(OP, q)?;
    expect_same(OP, &[q, k_cache, v_cache])?;
    let cache = cache_dims(OP, k_cache)?;
    k_cache.shape().expect_eq("kv_cache::attention (k_cache vs v_cache)", v_cache.shape())?;
    let [_, q_heads, dim] = q.shape().dims_n::<3>(OP)?;
    if dim != cache.head_dim {
        return Err(Error::ShapeMismatch { op: OP, lhs: q.shape().clone(), rhs: k_cache.shape().clone() });
    }
    if q_heads == 0 || q_heads % cache.kv_heads != 0 {
        return Err(Error::invalid(format!(
            "{OP}: q {} has {q_heads} heads, not a positive multiple of the {} kv heads of the cache {}",
            q.shape(),
            cache.kv_heads,
            k_cache.shape()
        )));
    }
    expect_rows(OP, q.shape(), seqs, positions)?;
    check_indices(OP, cache, seqs, positions)?;
    let d = AttentionDims { cache, q_heads };
    match q.device() {
        Device::Cpu(_) => with_compute_type!(q.dtype(), OP, T => {
            let mut o = vec![0f32; q.elem_count()];
            {
                let (qs, ks, vs) = (q.read()?, k_cache.read()?, v_cache.read()?);
                cpu_fast::attention(qs.cpu::<T>()?, ks.cpu::<T>()?, vs.cpu::<T>()?, d, seqs, positions, &mut o);
            }
            Tensor::from_f32(o, q.shape().clone(), q.dtype(), q.device())
        }),
        Device::Cuda(_) => with_compute_type!(q.dtype(), OP, T => {
            let dev = cuda_device(q)?;
            let mut o = dev.alloc::<T>(q.elem_count())?;
            let (qs, ks, vs) = (q.read()?, k_cache.read()?, v_cache.read()?);
            cuda::attention::<T>(dev, qs.cuda()?, ks.cuda()?, vs.cuda()?, o.slice_mut(), d, seqs, positions)?;
            cuda_tensor(o, q.shape().clone(), q.device())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda_for_tests;
    use crate::testing::{assert_close, random_f32};
    use crate::DType;

    fn tensor(data: Vec<f32>, shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
        Tensor::from_f32(data, shape.to_vec(), dtype, dev).unwrap()
    }

    /// The fast path's e^x on x ≤ 0 against f64 exp: every 1/1024 from −90 to 0, plus the
    /// ends (0 → 1, −∞ → 0, NaN → NaN).
    #[test]
    fn exp_nonpositive_matches_f64_exp() {
        let exp = crate::ops::exp_nonpositive;
        let mut worst = (0.0f64, 0.0f32);
        for i in 0..=90 * 1024 {
            let x = -(i as f32) / 1024.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if x >= -87.0 {
                let rel = (got - want).abs() / want;
                if rel > worst.0 {
                    worst = (rel, x);
                }
            } else {
                assert!(got == 0.0 || (got - want).abs() <= 2.0f64.powi(-125), "e^{x}: {got}");
            }
        }
        assert!(worst.0 <= 2e-7, "largest relative error {:.3e} at x = {}", worst.0, worst.1);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// A lookup case: sizes, and the (sequence, position) of every query row.
    struct Case {
        d: AttentionDims,
        seqs: Vec<u32>,
        positions: Vec<u32>,
    }

    /// (B, S, Hq, Hkv, D, seqs, positions): D in {1, 7, 40, 64, 80, 128}, Hq/Hkv in {1, 3, 4, 5, 8},
    /// positions out of order and with gaps, sequences of different lengths, N = 1, one key.
    fn cases() -> Vec<Case> {
        let case = |(sequences, capacity, q_heads, kv_heads, head_dim): (usize, usize, usize, usize, usize),
                    seqs: &[u32],
                    positions: &[u32]| Case {
            d: AttentionDims { cache: CacheDims { sequences, capacity, kv_heads, head_dim }, q_heads },
            seqs: seqs.to_vec(),
            positions: positions.to_vec(),
        };
        vec![
            case((1, 1, 1, 1, 1), &[0], &[0]),
            case((3, 20, 3, 1, 7), &[2, 0, 1, 2, 0], &[19, 0, 5, 11, 3]),
            case((2, 40, 4, 1, 64), &[1], &[39]),
            case((4, 33, 6, 2, 80), &[3, 1, 0, 2, 3, 1], &[0, 32, 7, 13, 21, 2]),
            case((2, 70, 8, 2, 128), &[0, 1], &[69, 40]),
            case((2, 12, 3, 3, 7), &[1, 1, 1, 1, 1], &[4, 5, 6, 7, 8]),
            case((3, 9, 4, 4, 1), &[2, 0, 1], &[8, 8, 0]),
            // Runs of one sequence long enough for blocks: 70 rows (two blocks) from position
            // 3, then 9 rows out of order with gaps, between single rows of other sequences.
            case(
                (3, 80, 6, 2, 7),
                &run(&[(2, 1), (1, 70), (0, 1)]),
                &[&[5][..], &(3..73).collect::<Vec<u32>>(), &[0]].concat(),
            ),
            case((2, 30, 4, 4, 64), &run(&[(1, 9)]), &[20, 3, 4, 29, 0, 7, 8, 15, 1]),
            // Single rows over long contexts (265, 65 and 128 keys), three query heads per kv
            // head.
            case((3, 300, 6, 2, 64), &[0, 2, 1], &[264, 64, 127]),
            // Single rows with 5 and 8 query heads per kv head.
            case((2, 50, 10, 2, 64), &[1, 0], &[49, 17]),
            case((1, 40, 8, 1, 40), &[0], &[39]),
        ]
    }

    /// Sequence ids: `count` rows of sequence `seq` for each (seq, count).
    fn run(parts: &[(u32, usize)]) -> Vec<u32> {
        parts.iter().flat_map(|&(seq, count)| std::iter::repeat_n(seq, count)).collect()
    }

    /// Random q [N, Hq, D] and caches [B, Hkv, S, D] for a case, as f32 values.
    fn inputs(c: &Case, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let q_len = c.seqs.len() * c.d.q_heads * c.d.cache.head_dim;
        let len = c.d.cache.len();
        (random_f32(q_len, 2.0, seed), random_f32(len, 2.0, seed + 1), random_f32(len, 1.0, seed + 2))
    }

    fn reference(q: &[f32], k: &[f32], v: &[f32], c: &Case) -> Vec<f32> {
        let mut o = vec![f32::NAN; q.len()];
        cpu::attention(q, k, v, c.d, &c.seqs, &c.positions, &mut o);
        o
    }

    #[test]
    fn fast_cpu_path_matches_reference() {
        for (i, c) in cases().iter().enumerate() {
            let (q, k, v) = inputs(c, 10 * i as u64);
            let want = reference(&q, &k, &v, c);
            let mut o = vec![f32::NAN; q.len()];
            cpu_fast::attention(&q, &k, &v, c.d, &c.seqs, &c.positions, &mut o);
            assert_close(&format!("fast f32 {:?}", c.d), &o, &want, 1e-5, 1e-4);
            // BF16 inputs are read as they are stored (widened per element).
            let bf = |x: &[f32]| x.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>();
            let wide = |x: &[half::bf16]| x.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
            let (qb, kb, vb) = (bf(&q), bf(&k), bf(&v));
            let want = reference(&wide(&qb), &wide(&kb), &wide(&vb), c);
            cpu_fast::attention(&qb, &kb, &vb, c.d, &c.seqs, &c.positions, &mut o);
            assert_close(&format!("fast bf16 {:?}", c.d), &o, &want, 1e-5, 1e-4);
        }
    }

    /// Prefill through the cache is [`crate::ops::attention`] on the prompt: whole, in two
    /// chunks (the second attending to the first from the cache), and one decode row.
    #[test]
    fn prefill_matches_full_causal_attention() {
        let dev = Device::cpu();
        let (t, hq, hkv, dim) = (13, 6, 2, 16);
        let (q, k, v) =
            (random_f32(t * hq * dim, 2.0, 1), random_f32(t * hkv * dim, 2.0, 2), random_f32(t * hkv * dim, 1.0, 3));
        let f = DType::F32;
        let (want, _) = crate::ops::attention::forward(
            &tensor(q.clone(), &[1, t, hq, dim], f, &dev),
            &tensor(k.clone(), &[1, t, hkv, dim], f, &dev),
            &tensor(v.clone(), &[1, t, hkv, dim], f, &dev),
        )
        .unwrap();
        let want = want.to_f32_vec().unwrap();
        // Sequence 1 of a cache with room for 20 positions of 3 sequences.
        let cache = || Tensor::zeros([3, hkv, 20, dim], f, &dev).unwrap();
        let rows = |x: &[f32], tokens: std::ops::Range<usize>, heads| {
            tensor(
                x[tokens.start * heads * dim..tokens.end * heads * dim].to_vec(),
                &[tokens.len(), heads, dim],
                f,
                &dev,
            )
        };
        // Chunk boundaries: the whole prompt, then 5 tokens and the rest.
        for bounds in [&[0, t][..], &[0, 5, t][..]] {
            let (k_cache, v_cache) = (cache(), cache());
            let mut got = Vec::new();
            for tokens in bounds.windows(2).map(|w| w[0]..w[1]) {
                let positions: Vec<u32> = tokens.clone().map(|p| p as u32).collect();
                let seqs = vec![1; tokens.len()];
                write(&k_cache, &rows(&k, tokens.clone(), hkv), &seqs, &positions).unwrap();
                write(&v_cache, &rows(&v, tokens.clone(), hkv), &seqs, &positions).unwrap();
                let o = attention(&rows(&q, tokens, hq), &k_cache, &v_cache, &seqs, &positions).unwrap();
                assert_eq!(o.dims(), [positions.len(), hq, dim]);
                got.extend(o.to_f32_vec().unwrap());
            }
            assert_close("prefill through the cache", &got, &want, 1e-5, 1e-4);
            // Decode: the last token alone, its keys already cached.
            let last = attention(&rows(&q, t - 1..t, hq), &k_cache, &v_cache, &[1], &[t as u32 - 1]).unwrap();
            assert_close("decode row", &last.to_f32_vec().unwrap(), &want[(t - 1) * hq * dim..], 1e-5, 1e-4);
        }
    }

    /// One head, D = 4 (c = 1/2): s_0 = 0, s_1 = ln 3, so the query weighs v_0, v_1 by 1/4, 3/4.
    #[test]
    fn hand_worked_two_keys() {
        let dev = Device::cpu();
        let ln3 = 3f32.ln();
        let f = DType::F32;
        // Cache [2 sequences, 1 head, 3 positions, 4]: keys and values in sequence 1.
        let (k_cache, v_cache) =
            (Tensor::zeros([2, 1, 3, 4], f, &dev).unwrap(), Tensor::zeros([2, 1, 3, 4], f, &dev).unwrap());
        write(&k_cache, &tensor(vec![0., 0., 1., 0., 0., 1., 0., 0.], &[2, 1, 4], f, &dev), &[1, 1], &[0, 1]).unwrap();
        write(&v_cache, &tensor(vec![4., 0., -4., 8., 0., 4., 8., -4.], &[2, 1, 4], f, &dev), &[1, 1], &[0, 1])
            .unwrap();
        let q = tensor(vec![2., 2. * ln3, 0., 0.], &[1, 1, 4], f, &dev);
        let o = attention(&q, &k_cache, &v_cache, &[1], &[1]).unwrap().to_f32_vec().unwrap();
        assert_close("two keys", &o, &[1., 3., 5., -1.], 1e-6, 1e-6);
        // At position 0 only key 0 is visible: o = v_0.
        let o = attention(&q, &k_cache, &v_cache, &[1], &[0]).unwrap().to_f32_vec().unwrap();
        assert_close("one key", &o, &[4., 0., -4., 8.], 1e-6, 1e-6);
    }

    #[test]
    fn write_places_rows_and_nothing_else() {
        let dev = Device::cpu();
        for dtype in [DType::F32, DType::BF16] {
            // Cache [2 sequences, 3 kv heads, 4 positions, 2]; row 0 (values 1..=6) to sequence
            // 1 at position 2, row 1 (7..=12) to sequence 0 at position 3. Head g of a row
            // lands at ((seq·3 + g)·4 + pos)·2.
            let before = random_f32(2 * 3 * 4 * 2, 1.0, 7);
            let cache = tensor(before.clone(), &[2, 3, 4, 2], dtype, &dev);
            let rows: Vec<f32> = (1..=12).map(|x| x as f32).collect();
            write(&cache, &tensor(rows, &[2, 3, 2], dtype, &dev), &[1, 0], &[2, 3]).unwrap();
            let mut want = tensor(before, &[2, 3, 4, 2], dtype, &dev).to_f32_vec().unwrap();
            for (at, pair) in
                [(28, [1., 2.]), (36, [3., 4.]), (44, [5., 6.]), (6, [7., 8.]), (14, [9., 10.]), (22, [11., 12.])]
            {
                want[at..at + 2].copy_from_slice(&pair);
            }
            assert_eq!(cache.to_f32_vec().unwrap(), want, "{dtype}");
            // No rows: nothing changes.
            write(&cache, &Tensor::zeros([0, 3, 2], dtype, &dev).unwrap(), &[], &[]).unwrap();
            assert_eq!(cache.to_f32_vec().unwrap(), want, "{dtype}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::cpu();
        let z = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, &dev).unwrap();
        let f = DType::F32;
        let cache = z(&[2, 2, 5, 3], f);
        let rows = z(&[2, 2, 3], f);
        let write_err = |cache: &Tensor, rows: &Tensor, seqs: &[u32], positions: &[u32]| {
            write(cache, rows, seqs, positions).unwrap_err().to_string()
        };
        let e = write_err(&cache, &rows, &[0, 2], &[0, 1]);
        assert!(e.contains("row 1 names sequence 2") && e.contains("[2, 2, 5, 3]"), "{e}");
        let e = write_err(&cache, &rows, &[0, 1], &[5, 1]);
        assert!(e.contains("row 0 is at position 5") && e.contains("5 per sequence"), "{e}");
        let e = write_err(&cache, &rows, &[0], &[0]);
        assert!(e.contains("[2, 2, 3] has 2 rows") && e.contains("1 sequence ids"), "{e}");
        let e = write_err(&cache, &rows, &[0, 1], &[0]);
        assert!(e.contains("1 positions"), "{e}");
        let e = write_err(&cache, &rows, &[1, 1], &[4, 4]);
        assert!(e.contains("sequence 1 at position 4"), "{e}");
        let e = write_err(&cache, &z(&[2, 2, 3], DType::BF16), &[0, 1], &[0, 0]);
        assert!(e.contains("dtype"), "{e}");
        let e = write_err(&cache, &z(&[2, 3, 3], f), &[0, 1], &[0, 0]);
        assert!(e.contains("[2, 2, 5, 3]") && e.contains("[2, 3, 3]"), "{e}");
        let e = write_err(&cache, &z(&[2, 6], f), &[0, 1], &[0, 0]);
        assert!(e.contains("[2, 6]") && e.contains("rank 3"), "{e}");
        let e = write_err(&z(&[2, 5, 6], f), &rows, &[0, 1], &[0, 0]);
        assert!(e.contains("[2, 5, 6]") && e.contains("rank 4"), "{e}");
        let e = write_err(&z(&[2, 0, 5, 3], f), &z(&[1, 0, 3], f), &[0], &[0]);
        assert!(e.contains("no heads"), "{e}");
        let view = cache.reshape([10, 2, 3]).unwrap();
        assert!(write_err(&cache, &view, &(0..10).map(|i| i / 5).collect::<Vec<_>>(), &[0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
            .contains("share"));
        assert!(
            write_err(&z(&[2, 2, 5, 3], DType::U32), &z(&[2, 2, 3], DType::U32), &[0, 1], &[0, 0]).contains("dtype")
        );

        let q = z(&[2, 4, 3], f);
        let att_err = |q: &Tensor, k: &Tensor, v: &Tensor, seqs: &[u32], positions: &[u32]| {
            attention(q, k, v, seqs, positions).unwrap_err().to_string()
        };
        assert!(attention(&q, &cache, &cache, &[1, 0], &[4, 0]).is_ok());
        let e = att_err(&q, &cache, &cache, &[1, 2], &[4, 0]);
        assert!(e.contains("row 1 names sequence 2"), "{e}");
        let e = att_err(&q, &cache, &cache, &[1, 0], &[5, 0]);
        assert!(e.contains("row 0 is at position 5"), "{e}");
        let e = att_err(&q, &cache, &cache, &[1], &[0]);
        assert!(e.contains("[2, 4, 3] has 2 rows"), "{e}");
        let e = att_err(&z(&[2, 4, 4], f), &cache, &cache, &[1, 0], &[0, 0]);
        assert!(e.contains("[2, 4, 4]") && e.contains("[2, 2, 5, 3]"), "{e}");
        let e = att_err(&z(&[2, 3, 3], f), &cache, &cache, &[1, 0], &[0, 0]);
        assert!(e.contains("3 heads") && e.contains("2 kv heads"), "{e}");
        let e = att_err(&q, &cache, &z(&[2, 2, 6, 3], f), &[1, 0], &[0, 0]);
        assert!(e.contains("[2, 2, 5, 3]") && e.contains("[2, 2, 6, 3]"), "{e}");
        let e = att_err(&z(&[2, 12], f), &cache, &cache, &[1, 0], &[0, 0]);
        assert!(e.contains("rank 3"), "{e}");
        let e = att_err(&q, &z(&[2, 2, 5, 3], DType::BF16), &z(&[2, 2, 5, 3], DType::BF16), &[1, 0], &[0, 0]);
        assert!(e.contains("dtype"), "{e}");
    }

    /// CUDA against the CPU: writes bit for bit, attention against the reference.
    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("kv_cache::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        let mut long = cases();
        // Many keys per warp, and D at the kernel's limit.
        long.push(Case {
            d: AttentionDims {
                cache: CacheDims { sequences: 2, capacity: 600, kv_heads: 2, head_dim: 256 },
                q_heads: 4,
            },
            seqs: vec![1, 0],
            positions: vec![599, 257],
        });
        for (dtype, atol, rtol) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 2e-2, 2e-2)] {
            for (i, c) in long.iter().enumerate() {
                let what = format!("kv_cache {dtype} {:?}", c.d);
                let cd = c.d.cache;
                let cache_shape = cd.shape();
                let (q, k, v) = inputs(c, 100 + 10 * i as u64);
                let q = tensor(q, &[c.seqs.len(), c.d.q_heads, cd.head_dim], dtype, &cpu);
                let (k, v) = (tensor(k, &cache_shape, dtype, &cpu), tensor(v, &cache_shape, dtype, &cpu));
                let (qg, kg, vg) = (q.to_device(&gpu).unwrap(), k.to_device(&gpu).unwrap(), v.to_device(&gpu).unwrap());
                let og = attention(&qg, &kg, &vg, &c.seqs, &c.positions).unwrap();
                assert_eq!((og.dims(), og.dtype()), (q.dims(), dtype));
                let host = |t: &Tensor| t.to_f32_vec().unwrap();
                let want = reference(&host(&q), &host(&k), &host(&v), c);
                assert_close(&what, &host(&og), &want, atol, rtol);

                // Distinct slots: the first occurrence of each (seq, pos) of the case.
                let mut slots: Vec<(u32, u32)> = c.seqs.iter().copied().zip(c.positions.iter().copied()).collect();
                slots.sort_unstable();
                slots.dedup();
                let (seqs, positions): (Vec<u32>, Vec<u32>) = slots.into_iter().unzip();
                let rows = tensor(
                    random_f32(seqs.len() * cd.row_len(), 1.0, 7),
                    &[seqs.len(), cd.kv_heads, cd.head_dim],
                    dtype,
                    &cpu,
                );
                write(&k, &rows, &seqs, &positions).unwrap();
                write(&kg, &rows.to_device(&gpu).unwrap(), &seqs, &positions).unwrap();
                assert_eq!(k.to_le_bytes().unwrap(), kg.to_le_bytes().unwrap(), "{what} write");
            }
        }
        let q = Tensor::zeros([1, 2, 257], DType::F32, &gpu).unwrap();
        let kv = Tensor::zeros([1, 1, 3, 257], DType::F32, &gpu).unwrap();
        let e = attention(&q, &kv, &kv, &[0], &[2]).unwrap_err().to_string();
        assert!(e.contains("MAX_HEAD_DIM") && e.contains("257"), "{e}");
        let kv_cpu = Tensor::zeros([1, 1, 3, 8], DType::F32, &cpu).unwrap();
        let q = Tensor::zeros([1, 2, 8], DType::F32, &gpu).unwrap();
        assert!(matches!(attention(&q, &kv_cpu, &kv_cpu, &[0], &[0]), Err(Error::DeviceMismatch { .. })));
    }
}
