//! KV cache reference: plain loops, softmax in f64.
//! cache, k, v: [B, Hkv, S, D] row-major (B sequences of capacity S); rows: [N, Hkv, D];
//! q, o: [N, Hq, D]; seqs, positions: \[N\].
//!   write:     cache[seqs\[n\], g, positions\[n\]] = rows\[n, g\] for g < Hkv
//!   attention: query head h of row n reads kv head g = h / (Hq / Hkv) of sequence b = seqs\[n\]
//!              at keys u = 0 ..= positions\[n\]; with c = 1/sqrt(D),
//!              s_u = c · q_nh·k[b, g, u],  p_u = e^{s_u − max s} / Σ_u' e^{s_u' − max s},
//!              o_nh = Σ_u p_u · v[b, g, u]
//! Indices are trusted here: `super` checks them before calling.

use crate::ops::Real;

/// Sizes of a KV cache [B, Hkv, S, D].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheDims {
    /// Sequences B.
    pub sequences: usize,
    /// Positions per sequence S (the capacity).
    pub capacity: usize,
    /// Key/value heads Hkv.
    pub kv_heads: usize,
    /// Head dimension D.
    pub head_dim: usize,
}

impl CacheDims {
    /// Elements of one written row (all kv heads of one position): Hkv·D.
    pub fn row_len(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The cache tensor's dims [B, Hkv, S, D].
    pub fn shape(&self) -> [usize; 4] {
        [self.sequences, self.kv_heads, self.capacity, self.head_dim]
    }

    /// Elements of the whole cache: B·Hkv·S·D.
    pub fn len(&self) -> usize {
        self.sequences * self.capacity * self.row_len()
    }

    /// True when the cache holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of cache[seq, g, pos, 0]: kv head g's vector at position `pos`.
    pub fn key_offset(&self, seq: u32, g: usize, pos: u32) -> usize {
        ((seq as usize * self.kv_heads + g) * self.capacity + pos as usize) * self.head_dim
    }
}

/// Sizes of an attention call: the caches and the query heads Hq (a multiple of Hkv).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// The k and v caches.
    pub cache: CacheDims,
    /// Query heads Hq.
    pub q_heads: usize,
}

impl AttentionDims {
    /// Query heads sharing one kv head: Hq / Hkv.
    pub fn group(&self) -> usize {
        self.q_heads / self.cache.kv_heads
    }

    /// The softmax scale 1/sqrt(D).
    pub fn scale(&self) -> f64 {
        1.0 / (self.cache.head_dim as f64).sqrt()
    }
}

/// cache[seqs\[n\], g, positions\[n\]] = rows\[n, g\] for every n and kv head g (a copy, any
/// element type).
pub fn write<T: Copy>(cache: &mut [T], rows: &[T], d: CacheDims, seqs: &[u32], positions: &[u32]) {
    let dim = d.head_dim;
    for ((row, &seq), &pos) in rows.chunks_exact(d.row_len()).zip(seqs).zip(positions) {
        for (g, head) in row.chunks_exact(dim).enumerate() {
            let at = d.key_offset(seq, g, pos);
            cache[at..at + dim].copy_from_slice(head);
        }
    }
}

/// o [N, Hq, D]: every query row attends the cached keys 0 ..= positions\[n\] of its sequence.
pub fn attention<F: Real>(q: &[F], k: &[F], v: &[F], d: AttentionDims, seqs: &[u32], positions: &[u32], o: &mut [F]) {
    let dim = d.cache.head_dim;
    let mut scores = Vec::new();
    let mut out = vec![0f64; dim];
    for (n, (&seq, &pos)) in seqs.iter().zip(positions).enumerate() {
        for h in 0..d.q_heads {
            let row = (n * d.q_heads + h) * dim;
            let q_row = &q[row..row + dim];
            // Start of kv head g's vector at position u of this sequence.
            let key = |u: u32| d.cache.key_offset(seq, h / d.group(), u);
            scores.clear();
            for u in 0..=pos {
                let k_row = &k[key(u)..key(u) + dim];
                let dot: f64 = q_row.iter().zip(k_row).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
                scores.push(d.scale() * dot);
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            out.fill(0.0);
            for (u, s) in (0..=pos).zip(&scores) {
                let p = (s - max).exp() / sum;
                for (acc, x) in out.iter_mut().zip(&v[key(u)..key(u) + dim]) {
                    *acc += p * x.to_f64();
                }
            }
            for (dst, &x) in o[row..row + dim].iter_mut().zip(&out) {
                *dst = F::from_f64(x);
            }
        }
    }
}
