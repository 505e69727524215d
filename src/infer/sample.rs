//! The next token from one row of logits `ℓ ∈ ℝ^V` (f32, V = vocabulary size): greedy, or a
//! seeded draw after the warpers of transformers' `generate`, in its order.
//!
//! Greedy (`temperature == 0`): `argmax_i ℓ_i`, ties to the lowest id (as `torch.argmax`);
//! `top_k` and `top_p` do not matter then.
//!
//! Sampling (`temperature > 0`), in f64:
//! 1. temperature: `x_i = ℓ_i / T` (`TemperatureLogitsWarper`);
//! 2. top-k: keep the tokens with `x_i ≥ x_(k)`, the k-th largest value. As in
//!    `TopKLogitsWarper` (which removes `x < topk(x, k)[-1]`), every token tied with the
//!    k-th value is kept, so more than k tokens may remain;
//! 3. softmax over the kept tokens: `p_i = exp(x_i − max x) / Σ exp(x_j − max x)`;
//! 4. top-p: with the kept tokens ordered by `p` descending (ties: lower id first), a token
//!    stays when the probability before it is below `top_p` — the smallest set of the most
//!    probable tokens whose mass reaches `top_p`, never empty. This is `TopPLogitsWarper`
//!    (which removes the tokens whose ascending cumulative probability is `≤ 1 − top_p`).
//!    The rest is renormalised;
//! 5. the draw: `u ~ U[0, 1)` from the sampler's ChaCha8 generator; the token is the first
//!    kept id, in id order, whose cumulative probability exceeds `u`.
//!
//! A `-inf` logit is a banned token, never chosen; NaN or `+inf` is an error, as is a row
//! with no finite logit. The same seed and logits give the same tokens.
//!
//! One [`Sampler`] per sequence. The sequences of a batch take [`Sampler::for_sequence`]:
//! sequence `i` draws from stream `i` of the ChaCha8 generator keyed by
//! `seed_from_u64(seed)` — independent streams under one key, sequence 0 being exactly the
//! single-sequence [`Sampler::new`].
//!
//! Cost per call: O(V) for the softmax and the top-k selection (no sort of the vocabulary);
//! top-p sorts only the tokens that could be kept, those with `p_i ≥ (1 − top_p) / n` over
//! `n` candidates (a token below that has more than `top_p` of the mass before it, since the
//! tokens after it weigh at most `n·p_i < 1 − top_p`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// How the next token is chosen (the `--temperature`, `--top-k`, `--top-p` and `--seed`
/// flags). Check it with [`Sampling::validate`]; [`Sampler::new`] does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits; `0` is greedy decoding. Finite and `≥ 0`.
    pub temperature: f32,
    /// Keep only the `k` most probable tokens (and those tied with the k-th); `None` keeps
    /// all. At least 1.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most probable tokens whose probability reaches `top_p`;
    /// `None` (or 1) keeps all. In `(0, 1]`.
    pub top_p: Option<f32>,
    /// Seed of the generator of the draws.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Sampling {
        Sampling { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
    }

    /// Whether this is greedy decoding (`temperature == 0`).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Refuses a NaN, infinite or negative temperature, `top_k == 0` and `top_p` outside
    /// `(0, 1]`, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(Error::invalid(format!("--temperature must be a finite number ≥ 0 (0 is greedy), got {t}")));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("--top-k must be at least 1 (leave it out to keep every token), got 0"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid(format!("--top-p must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// Chooses the tokens of one sequence (see the module doc).
#[derive(Clone, Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
    /// `(id, weight)` of the tokens the next draw may give, in id order; the weights are
    /// proportional to the probabilities (`exp(x_i − max x)`).
    kept: Vec<(u32, f64)>,
    /// Scratch for the top-k selection and the top-p ordering.
    ranked: Vec<(u32, f64)>,
}

impl Sampler {
    /// A sampler for one sequence, its generator seeded with `sampling.seed`.
    pub fn new(sampling: Sampling) -> Result<Sampler> {
        Self::for_sequence(sampling, 0)
    }

    /// The sampler of sequence `index` of a batch: stream `index` of the generator keyed by
    /// `sampling.seed` (sequence 0 is [`Sampler::new`]).
    pub fn for_sequence(sampling: Sampling, index: u64) -> Result<Sampler> {
        sampling.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
        rng.set_stream(index);
        Ok(Sampler { sampling, rng, kept: Vec::new(), ranked: Vec::new() })
    }

    /// The settings this sampler uses.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// The next token for `logits` (one row, `[V]`); advances the generator by one draw
    /// when sampling (not when greedy).
    pub fn next(&mut self, logits: &[f32]) -> Result<u32> {
        if self.sampling.is_greedy() {
            return argmax(logits);
        }
        let total = self.keep(logits)?;
        let target = self.rng.random::<f64>() * total;
        let mut cumulative = 0.0;
        let mut last_positive = self.kept[0].0;
        for &(id, weight) in &self.kept {
            cumulative += weight;
            if weight > 0.0 {
                if target < cumulative {
                    return Ok(id);
                }
                last_positive = id;
            }
        }
        // Only reached when rounding leaves `target` at the very top of the sum.
        Ok(last_positive)
    }

    /// The tokens [`Sampler::next`] may give for `logits` and their probabilities, in id
    /// order (greedy: the argmax with probability 1). Does not advance the generator.
    pub fn distribution(&mut self, logits: &[f32]) -> Result<Vec<(u32, f64)>> {
        if self.sampling.is_greedy() {
            return Ok(vec![(argmax(logits)?, 1.0)]);
        }
        let total = self.keep(logits)?;
        Ok(self.kept.iter().map(|&(id, w)| (id, w / total)).collect())
    }

    /// Fills `kept` with the tokens a draw may give (steps 1–4 of the module doc) and
    /// returns the sum of their weights.
    fn keep(&mut self, logits: &[f32]) -> Result<f64> {
        check_logits(logits)?;
        let temperature = self.sampling.temperature as f64;
        self.kept.clear();
        self.kept.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &l)| l != f32::NEG_INFINITY)
                .map(|(i, &l)| (i as u32, l as f64 / temperature)),
        );
        if let Some(k) = self.sampling.top_k.filter(|&k| k < self.kept.len()) {
            self.ranked.clone_from(&self.kept);
            let (_, kth, _) = self.ranked.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            let threshold = kth.1;
            self.kept.retain(|&(_, x)| x >= threshold);
        }
        let max = self.kept.iter().map(|e| e.1).fold(f64::NEG_INFINITY, f64::max);
        for entry in &mut self.kept {
            entry.1 = (entry.1 - max).exp();
        }
        let total: f64 = self.kept.iter().map(|e| e.1).sum();
        let Some(top_p) = self.sampling.top_p.map(f64::from).filter(|&p| p < 1.0) else {
            return Ok(total);
        };
        // Tokens below this weight cannot be kept (module doc); the rest, ranked.
        let floor = (1.0 - top_p) / self.kept.len() as f64 * total;
        self.ranked.clear();
        self.ranked.extend(self.kept.iter().filter(|e| e.1 >= floor));
        self.ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let budget = top_p * total;
        let mut before = 0.0;
        let mut n = 0;
        for &(_, weight) in &self.ranked {
            if before >= budget {
                break;
            }
            before += weight;
            n += 1;
        }
        // n ≥ 1: the most probable token (weight 1 ≥ floor, as total ≤ n) is ranked first
        // with nothing before it.
        self.kept.clear();
        self.kept.extend_from_slice(&self.ranked[..n]);
        self.kept.sort_unstable_by_key(|e| e.0);
        Ok(self.kept.iter().map(|e| e.1).sum())
    }
}

/// Refuses an empty row, NaN, `+inf`, and a row whose every logit is `-inf`; returns the
/// largest logit.
fn check_logits(logits: &[f32]) -> Result<f32> {
    if logits.is_empty() {
        return Err(Error::invalid("sampling: empty logits (a vocabulary of 0 tokens)"));
    }
    // Passes with no early exit (they vectorize): whether any logit is NaN or +inf, then
    // the largest.
    let bad = logits.iter().fold(false, |b, &l| b | (l.is_nan() || l == f32::INFINITY));
    if bad {
        let (i, l) = logits.iter().enumerate().find(|(_, l)| l.is_nan() || **l == f32::INFINITY).expect("a bad logit");
        return Err(Error::invalid(format!(
            "sampling: the logit of token {i} is {l} (of {} logits): logits must be finite or -inf",
            logits.len()
        )));
    }
    let max = crate::ops::max_f32(logits);
    if max == f32::NEG_INFINITY {
        return Err(Error::invalid(format!("sampling: all {} logits are -inf: no token can be chosen", logits.len())));
    }
    Ok(max)
}

/// `argmax_i logits_i`, ties to the lowest id (as `torch.argmax`); errors as the module doc
/// says.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    let max = check_logits(logits)?;
    let best = logits.iter().position(|&l| l == max).expect("the maximum is one of the logits");
    Ok(best as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Sampling {
        Sampling { temperature, top_k, top_p, seed }
    }

    fn draws(s: Sampling, logits: &[f32], n: usize) -> Vec<u32> {
        let mut sampler = Sampler::new(s).unwrap();
        (0..n).map(|_| sampler.next(logits).unwrap()).collect()
    }

    /// The 5-token case worked by hand: e^2, e^1, e^0.5, e^0, e^-1 over 13.1236… give
    /// p ≈ [0.5630, 0.2071, 0.1256, 0.0762, 0.0280].
    const FIVE: [f32; 5] = [2.0, 1.0, 0.5, 0.0, -1.0];

    /// `exp(l_i / t)` normalised over `ids` (the hand-worked renormalisation), 0 elsewhere.
    fn softmax_over(logits: &[f32], t: f64, ids: &[usize]) -> Vec<f64> {
        let z: f64 = ids.iter().map(|&i| (logits[i] as f64 / t).exp()).sum();
        (0..logits.len()).map(|i| if ids.contains(&i) { (logits[i] as f64 / t).exp() / z } else { 0.0 }).collect()
    }

    /// Chi-square upper 0.1% points, by degrees of freedom 1..=6.
    const CHI2_999: [f64; 6] = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46];

    /// 20,000 draws: a token of probability 0 never appears, each bucket is within 5
    /// standard errors of n·p, and the chi-square statistic is below its 0.1% point.
    fn check_empirical(s: Sampling, logits: &[f32], want: &[f64]) {
        let n = 20_000;
        let mut counts = vec![0usize; logits.len()];
        for id in draws(s, logits, n) {
            counts[id as usize] += 1;
        }
        let mut chi2 = 0.0;
        let mut buckets = 0;
        for (i, (&c, &p)) in counts.iter().zip(want).enumerate() {
            let expected = n as f64 * p;
            if p == 0.0 {
                assert_eq!(c, 0, "token {i} has probability 0 but was drawn {c} times ({s:?})");
                continue;
            }
            let se = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (c as f64 - expected).abs() <= 5.0 * se + 1e-9,
                "token {i}: {c} draws, expected {expected:.1} ± {se:.1} ({s:?}, counts {counts:?})"
            );
            chi2 += (c as f64 - expected).powi(2) / expected;
            buckets += 1;
        }
        if buckets > 1 {
            let bound = CHI2_999[buckets - 2];
            assert!(chi2 < bound, "chi-square {chi2:.2} over {buckets} buckets ≥ {bound} ({s:?}, counts {counts:?})");
        }
    }

    fn check_distribution(s: Sampling, logits: &[f32], want: &[f64]) {
        let got = Sampler::new(s).unwrap().distribution(logits).unwrap();
        let mut dense = vec![0.0; logits.len()];
        for (id, p) in got {
            dense[id as usize] = p;
        }
        for (i, (g, w)) in dense.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-12, "token {i}: probability {g}, hand-worked {w} ({s:?})");
        }
    }

    #[test]
    fn greedy_is_the_argmax_with_ties_to_the_lowest_id() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NEG_INFINITY, 2.0]).unwrap(), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY, -5.0]).unwrap(), 2);
        assert_eq!(argmax(&[0.5]).unwrap(), 0);
        // Rows past the 16-lane scan: every position of the maximum, ties, -inf elsewhere,
        // against a plain loop; NaN and +inf found wherever they are.
        for len in [17, 40, 1000] {
            for at in [0, 15, 16, len / 2, len - 1] {
                let mut row: Vec<f32> = (0..len).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
                row[len / 3] = f32::NEG_INFINITY;
                row[at] = 7.0;
                let mut want = 0;
                for (i, &l) in row.iter().enumerate() {
                    if l > row[want] {
                        want = i;
                    }
                }
                assert_eq!(argmax(&row).unwrap() as usize, want, "len {len}, maximum at {at}");
                row[(at + 1) % len] = 7.0;
                assert_eq!(argmax(&row).unwrap() as usize, at.min((at + 1) % len), "len {len}, tie at {at}");
                for bad in [f32::NAN, f32::INFINITY] {
                    let mut with = row.clone();
                    with[at] = bad;
                    let e = argmax(&with).unwrap_err().to_string();
                    assert!(e.contains(&format!("token {at} ")), "len {len}, {bad} at {at}: {e}");
                }
            }
        }
        // Temperature 0 is greedy whatever top-k/top-p say, and draws nothing.
        let mut s = Sampler::new(sampling(0.0, Some(3), Some(0.5), 7)).unwrap();
        for _ in 0..5 {
            assert_eq!(s.next(&[-1.0, 4.0, 4.0, 0.0]).unwrap(), 1);
        }
        assert_eq!(s.distribution(&[-1.0, 4.0, 4.0, 0.0]).unwrap(), vec![(1, 1.0)]);
    }

    #[test]
    fn top_k_1_is_greedy_at_any_temperature() {
        let logits = crate::testing::random_f32(1001, 4.0, 11);
        let best = argmax(&logits).unwrap();
        for t in [0.05, 0.7, 1.0, 10.0, 1e4] {
            for seed in 0..3 {
                let got = draws(sampling(t, Some(1), None, seed), &logits, 50);
                assert!(got.iter().all(|&id| id == best), "T={t} seed {seed}: {got:?} vs argmax {best}");
            }
        }
        // Tokens tied with the k-th value are kept, as transformers' TopKLogitsWarper keeps
        // them: with two equal maxima, top-k=1 draws both.
        check_distribution(sampling(1.0, Some(1), None, 0), &[3.0, 3.0, 1.0], &[0.5, 0.5, 0.0]);
        check_distribution(
            sampling(1.0, Some(2), None, 0),
            &[3.0, 1.0, 1.0, 0.0],
            &softmax_over(&[3.0, 1.0, 1.0, 0.0], 1.0, &[0, 1, 2]),
        );
    }

    #[test]
    fn a_tiny_top_p_is_greedy_even_with_ties() {
        let mut logits = crate::testing::random_f32(997, 4.0, 12);
        let best = argmax(&logits).unwrap() as usize;
        logits[best + 1] = logits[best]; // a tie at the top: the lower id comes first
        for t in [0.3, 1.0, 50.0] {
            let got = draws(sampling(t, None, Some(1e-6), 3), &logits, 50);
            assert!(got.iter().all(|&id| id as usize == best), "T={t}: {got:?} vs argmax {best}");
        }
    }

    #[test]
    fn draws_follow_the_softmax_at_temperature_1() {
        let want = softmax_over(&FIVE, 1.0, &[0, 1, 2, 3, 4]);
        let hand = [0.5630, 0.2071, 0.1256, 0.0762, 0.0280];
        for (w, h) in want.iter().zip(hand) {
            assert!((w - h).abs() < 1e-4, "{want:?} vs the hand-worked {hand:?}");
        }
        check_distribution(sampling(1.0, None, None, 0), &FIVE, &want);
        check_empirical(sampling(1.0, None, None, 1), &FIVE, &want);
        // Temperature 2 flattens (e^{l/2}); a banned token (-inf) is never drawn.
        let banned = [2.0, f32::NEG_INFINITY, 0.5, 0.0, -1.0];
        let want = softmax_over(&banned, 2.0, &[0, 2, 3, 4]);
        check_distribution(sampling(2.0, None, None, 0), &banned, &want);
        check_empirical(sampling(2.0, None, None, 2), &banned, &want);
    }

    #[test]
    fn top_k_and_top_p_renormalise_as_worked_by_hand() {
        // top-k=3: {0, 1, 2}, renormalised: e^2, e^1, e^0.5 over 11.756 → 0.629, 0.231, 0.140.
        let want = softmax_over(&FIVE, 1.0, &[0, 1, 2]);
        assert!((want[0] - 0.6285).abs() < 1e-4 && (want[2] - 0.1402).abs() < 1e-4, "{want:?}");
        check_distribution(sampling(1.0, Some(3), None, 0), &FIVE, &want);
        check_empirical(sampling(1.0, Some(3), None, 3), &FIVE, &want);
        // top-p=0.7: cumulative 0.563 < 0.7, then 0.770 ≥ 0.7 → {0, 1}.
        let want = softmax_over(&FIVE, 1.0, &[0, 1]);
        check_distribution(sampling(1.0, None, Some(0.7), 0), &FIVE, &want);
        check_empirical(sampling(1.0, None, Some(0.7), 4), &FIVE, &want);
        // top-p=0.8: 0.770 < 0.8, then 0.896 → {0, 1, 2}.
        let want = softmax_over(&FIVE, 1.0, &[0, 1, 2]);
        check_distribution(sampling(1.0, None, Some(0.8), 0), &FIVE, &want);
        // top-k before top-p (transformers' order): after top-k=3 the cumulative is 0.629,
        // 0.860 ≥ 0.8 → {0, 1}; top-p first would have kept {0, 1, 2}.
        let want = softmax_over(&FIVE, 1.0, &[0, 1]);
        check_distribution(sampling(1.0, Some(3), Some(0.8), 0), &FIVE, &want);
        check_empirical(sampling(1.0, Some(3), Some(0.8), 5), &FIVE, &want);
        // Temperature before top-p: at T=0.5 (e^{2l}) p ≈ [0.829, 0.112, 0.041, 0.015, 0.002],
        // so top-p=0.9 keeps {0, 1} (0.829 < 0.9 ≤ 0.941).
        let want = softmax_over(&FIVE, 0.5, &[0, 1]);
        check_distribution(sampling(0.5, None, Some(0.9), 0), &FIVE, &want);
        check_empirical(sampling(0.5, None, Some(0.9), 6), &FIVE, &want);
        // top-p=1 and top-k ≥ V keep everything.
        let want = softmax_over(&FIVE, 1.0, &[0, 1, 2, 3, 4]);
        check_distribution(sampling(1.0, Some(5), Some(1.0), 0), &FIVE, &want);
        check_distribution(sampling(1.0, Some(99), None, 0), &FIVE, &want);
    }

    #[test]
    fn top_p_matches_a_full_sort_on_a_large_vocabulary() {
        // The pre-filter (only tokens with p ≥ (1 − top_p)/n are ranked) against a plain
        // reading of the rule over all tokens.
        let logits = crate::testing::random_f32(4099, 6.0, 13);
        for top_p in [0.05f32, 0.5, 0.9, 0.999] {
            let got: Vec<u32> = Sampler::new(sampling(0.8, None, Some(top_p), 0))
                .unwrap()
                .distribution(&logits)
                .unwrap()
                .into_iter()
                .map(|e| e.0)
                .collect();
            let z: f64 = logits.iter().map(|&l| (l as f64 / 0.8).exp()).sum();
            let mut ranked: Vec<(u32, f64)> =
                logits.iter().enumerate().map(|(i, &l)| (i as u32, (l as f64 / 0.8).exp() / z)).collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut before = 0.0;
            let mut want: Vec<u32> = ranked
                .iter()
                .take_while(|e| {
                    let keep = before < top_p as f64;
                    before += e.1;
                    keep
                })
                .map(|e| e.0)
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "top_p={top_p}");
        }
    }

    #[test]
    fn seeds_decide_the_sequence() {
        let logits = crate::testing::random_f32(50, 1.0, 14);
        let s = sampling(1.0, Some(20), Some(0.95), 42);
        let a = draws(s, &logits, 64);
        assert_eq!(a, draws(s, &logits, 64), "same seed, same tokens");
        assert_ne!(a, draws(Sampling { seed: 43, ..s }, &logits, 64), "another seed, other tokens");
        // Batch sequences: stream i of the same key; sequence 0 is the single sampler.
        let stream = |i: u64| -> Vec<u32> {
            let mut sampler = Sampler::for_sequence(s, i).unwrap();
            (0..64).map(|_| sampler.next(&logits).unwrap()).collect()
        };
        assert_eq!(stream(0), a);
        assert_ne!(stream(1), a);
        assert_ne!(stream(1), stream(2));
        assert_eq!(stream(2), stream(2));
    }

    #[test]
    fn bad_settings_and_logits_are_refused() {
        let refused = |s: Sampling, flag: &str| {
            let e = Sampler::new(s).unwrap_err().to_string();
            assert!(e.contains(flag), "{s:?}: {e}");
        };
        refused(sampling(f32::NAN, None, None, 0), "--temperature");
        refused(sampling(-0.5, None, None, 0), "--temperature");
        refused(sampling(f32::INFINITY, None, None, 0), "--temperature");
        refused(sampling(1.0, Some(0), None, 0), "--top-k");
        for p in [0.0, -0.1, 1.5, f32::NAN] {
            refused(sampling(1.0, None, Some(p), 0), "--top-p");
        }
        assert!(sampling(1.0, Some(1), Some(1.0), 0).validate().is_ok());
        for s in [Sampling::greedy(), sampling(1.0, Some(2), Some(0.9), 0)] {
            let mut sampler = Sampler::new(s).unwrap();
            let e = sampler.next(&[0.0, f32::NAN, 1.0]).unwrap_err().to_string();
            assert!(e.contains("token 1") && e.contains("NaN"), "{e}");
            let e = sampler.next(&[0.0, 1.0, f32::INFINITY]).unwrap_err().to_string();
            assert!(e.contains("token 2") && e.contains("inf"), "{e}");
            let e = sampler.next(&[]).unwrap_err().to_string();
            assert!(e.contains("empty"), "{e}");
            let e = sampler.next(&[f32::NEG_INFINITY; 3]).unwrap_err().to_string();
            assert!(e.contains("all 3 logits are -inf"), "{e}");
        }
    }
}
