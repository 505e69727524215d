//! Test helpers shared by unit tests, integration tests and benches: tolerance checks
//! that report the worst element, f64 finite differences, seeded random data.
//! Tolerances are `atol + rtol·|ref|` per element.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sparse::BitMask;

/// Seeded uniform values in [-scale, scale).
pub fn random_f64(n: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| scale * (2.0 * rng.random::<f64>() - 1.0)).collect()
}

/// Seeded uniform f32 values in [-scale, scale).
pub fn random_f32(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    random_f64(n, scale as f64, seed).into_iter().map(|v| v as f32).collect()
}

/// Seeded uniform ids in [0, below) (token ids, e.g. for embeddings).
pub fn random_ids(n: usize, below: u32, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..below)).collect()
}

/// A seeded random mask [rows, cols] (1 = kept) with exact counts: with `nm` = Some((n, m)),
/// n kept in every group of m consecutive columns of a row; otherwise ⌊cols·sparsity⌋
/// pruned in every row. Positions come from a shuffle (no selection code involved).
pub fn random_mask(rows: usize, cols: usize, sparsity: f64, nm: Option<(usize, usize)>, seed: u64) -> BitMask {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut mask = BitMask::all_kept(rows, cols);
    let (group, pruned) = match nm {
        Some((n, m)) => (m, m - n),
        None => (cols.max(1), (cols as f64 * sparsity).floor() as usize),
    };
    let mut idx: Vec<usize> = Vec::with_capacity(group);
    for r in 0..rows {
        for g in (0..cols).step_by(group) {
            idx.clear();
            idx.extend(g..(g + group).min(cols));
            idx.shuffle(&mut rng);
            for &c in idx.iter().take(pruned) {
                mask.set(r, c, false);
            }
        }
    }
    mask
}

/// Seeded pruning scores with deliberate ties (values quantised to eighths, ±0), NaN and ±∞,
/// from [`random_f32`] in [-1, 1): about 3.5% NaN, 1.5% +∞, 2.5% −∞.
pub fn tricky_scores(n: usize, seed: u64) -> Vec<f32> {
    random_f32(n, 1.0, seed)
        .into_iter()
        .enumerate()
        .map(|(i, u)| match u {
            u if u > 0.93 => f32::NAN,
            u if u > 0.9 => f32::INFINITY,
            u if u < -0.95 => f32::NEG_INFINITY,
            u if i % 3 == 0 => (u * 8.0).round() / 8.0,
            u if i % 7 == 0 => 0.0 * u.signum(),
            u => u,
        })
        .collect()
}

/// Panics at the first byte where the bitmask bytes `got` and `want` (rows of `stride`
/// bytes) differ, naming its row and columns.
pub fn assert_same_mask(what: &str, got: &[u8], want: &[u8], stride: usize) {
    assert_eq!(got.len(), want.len(), "{what}: mask lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: row {}, columns {}..{}: got {:08b}, want {:08b}",
            i / stride,
            i % stride * 8,
            i % stride * 8 + 8,
            got[i],
            want[i]
        );
    }
}

/// Worst violation of `|got − want| ≤ atol + rtol·|want|`: (index, got, want, excess ratio).
/// NaN or a length mismatch is always a violation.
pub fn worst_error(got: &[f64], want: &[f64], atol: f64, rtol: f64) -> Option<(usize, f64, f64, f64)> {
    if got.len() != want.len() {
        return Some((usize::MAX, got.len() as f64, want.len() as f64, f64::INFINITY));
    }
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ratio = if g.is_nan() || w.is_nan() { f64::INFINITY } else { (g - w).abs() / (atol + rtol * w.abs()) };
        if ratio > 1.0 && worst.is_none_or(|(_, _, _, r)| ratio > r) {
            worst = Some((i, g, w, ratio));
        }
    }
    worst
}

/// Panics with the worst element when `got` is not within `atol + rtol·|want|` of `want`.
pub fn assert_close_f64(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    // NaN once any difference is NaN (`f64::max` would pass over it).
    let max_abs =
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, |m, e| if e.is_nan() || e > m { e } else { m });
    if let Some((i, g, w, r)) = worst_error(got, want, atol, rtol) {
        panic!(
            "{what}: mismatch at index {i}: got {g:e}, want {w:e} ({r:.2}× the tolerance \
             atol {atol:e} + rtol {rtol:e}·|ref|); max abs error {max_abs:e}; lengths {} vs {}",
            got.len(),
            want.len()
        );
    }
}

/// [`assert_close_f64`] for f32 data.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    let g: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    let w: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    assert_close_f64(what, &g, &w, atol, rtol)
}

/// Gradient of `Σ_i f(x)_i · weights_i` with respect to x by central differences.
pub fn finite_diff(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], weights: &[f64], h: f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    let dot = |y: Vec<f64>| y.iter().zip(weights).map(|(a, b)| a * b).sum::<f64>();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let plus = dot(f(&xp));
            xp[i] = orig - h;
            let minus = dot(f(&xp));
            xp[i] = orig;
            (plus - minus) / (2.0 * h)
        })
        .collect()
}

/// A SparseGPT-like Hessian [cols, cols]: (2/t)·XᵀX for X = Z·(I + R/√cols) over
/// t = 2·cols + 16 tokens (correlated inputs, condition number of the mixing about 10), with
/// the inputs in `dead` that lie below `cols` always zero.
pub fn correlated_hessian(cols: usize, seed: u64, dead: &[usize]) -> Vec<f64> {
    let tokens = 2 * cols + 16;
    let z = random_f64(tokens * cols, 1.0, seed);
    let mut mix = random_f64(cols * cols, 1.0 / (cols as f64).sqrt(), seed + 1);
    for j in 0..cols {
        mix[j * cols + j] += 1.0;
    }
    let mut x = vec![0f64; tokens * cols];
    crate::linalg::gemm_f64(tokens, cols, cols, &mut x, cols, false, 1.0, &z, cols, false, &mix, cols, false);
    for t in 0..tokens {
        for &d in dead.iter().filter(|&&d| d < cols) {
            x[t * cols + d] = 0.0;
        }
    }
    let mut h = vec![0f64; cols * cols];
    crate::linalg::gemm_f64(
        cols,
        cols,
        tokens,
        &mut h,
        cols,
        false,
        2.0 / tokens as f64,
        &x,
        cols,
        true,
        &x,
        cols,
        false,
    );
    h
}

/// `model` with the linears of `layers` magnitude-pruned by `pattern`
/// ([`crate::prune::select::magnitude_pruned`]), everything else as it was.
pub fn magnitude_pruned(
    model: &crate::model::llama::Llama,
    layers: &[usize],
    pattern: crate::prune::select::Pattern,
) -> crate::Result<crate::model::llama::Llama> {
    use crate::model::llama::Part;
    model.map_tensors(|part, t| match part {
        Part::Linear(l, _) if layers.contains(l) => crate::prune::select::magnitude_pruned(t, pattern),
        _ => Ok(t.clone()),
    })
}

/// A small LLaMA config with awkward widths: 3 query heads of 12 over 1 kv head, 43 hidden
/// units (no N:M possible in down_proj), a 67-token vocabulary, 3 layers, an untied head and
/// 128 positions.
pub fn awkward_llama() -> crate::model::llama::LlamaConfig {
    crate::model::llama::LlamaConfig {
        vocab_size: 67,
        hidden_size: 36,
        intermediate_size: 43,
        num_hidden_layers: 3,
        num_attention_heads: 3,
        num_key_value_heads: 1,
        tie_word_embeddings: false,
        max_position_embeddings: 128,
        ..crate::model::llama::LlamaConfig::tiny()
    }
}

#[cfg(test)]
mod tests {
    use super::assert_close_f64;

    /// The failure message names the worst element, and its maximum error is NaN where a
    /// difference is NaN (it read 0 with one NaN among exact values).
    #[test]
    fn a_nan_shows_in_the_maximum_error() {
        let message = |got: Vec<f64>| {
            let err = std::panic::catch_unwind(|| assert_close_f64("case", &got, &[1.0, 2.0, 3.0], 1e-6, 0.0))
                .expect_err("a mismatch panics");
            err.downcast_ref::<String>().cloned().unwrap_or_default()
        };
        let m = message(vec![1.0, f64::NAN, 3.0]);
        assert!(m.contains("index 1") && m.contains("max abs error NaN"), "{m}");
        let m = message(vec![1.0, 2.5, 3.0]);
        assert!(m.contains("index 1") && m.contains("max abs error 5e-1"), "{m}");
        assert_close_f64("case", &[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 0.0, 0.0);
    }
}
