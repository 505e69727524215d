//! Inference linear on the CPU (`ops::infer_linear`), bf16 weights: dense against bitmask
//! 50% / 70% and 2:4, at LLaMA-2-7B shapes (4096×4096, 11008×4096, 4096×11008) and the
//! default model's (576×576, 1536×576, 576×1536, and its 49152×576 head, dense only), for
//! N = 1 token (decode) and N = 128 (prefill). Weights and masks are random (every row of
//! a bitmask keeps the same count).
//!
//! Criterion times repeated calls (weights stay in cache when they fit: this machine kind
//! reports a large L3) and reports weight bytes per second (GiB/s). The summary printed
//! after it times cold calls, as in a model's decode where each layer's weights come from
//! memory: before each call a 1 GiB buffer is read (evicting the weights), variants
//! alternate, and the best of a few calls counts. It gives weight GB/s (10⁹ B/s), the share
//! of the streaming read bandwidth (that 1 GiB buffer summed by the rayon threads, measured
//! before and after), and the speed-up over dense at the same shape and N.
//! `INFER_LINEAR_SHAPES=7b_up,smol_up` and `INFER_LINEAR_TOKENS=1` restrict the run.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use sparsetune::ops::infer_linear::{cpu_simd, dense, sparse};
use sparsetune::sparse::{SparseFormat, SparseWeight};
use sparsetune::testing::{random_f32, random_mask};
use sparsetune::{DType, Device, Tensor};

/// A buffer larger than the last-level cache, read to measure bandwidth and evict weights.
struct Streamer(Vec<u64>);

impl Streamer {
    fn new() -> Self {
        Streamer((0..(1u64 << 27)).collect())
    }

    /// Reads the whole buffer with the rayon threads; returns the seconds it took.
    fn read(&self) -> f64 {
        let per_thread = self.0.len().div_ceil(rayon::current_num_threads());
        let start = Instant::now();
        let sum = self
            .0
            .par_chunks(per_thread)
            .map(|part| {
                let mut lanes = [0u64; 8];
                for block in part.chunks_exact(8) {
                    for (l, &v) in lanes.iter_mut().zip(block) {
                        *l = l.wrapping_add(v);
                    }
                }
                lanes.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        start.elapsed().as_secs_f64()
    }

    /// Streaming read bandwidth in GB/s, best of 5.
    fn bandwidth(&self) -> f64 {
        let best = (0..5).map(|_| self.read()).fold(f64::INFINITY, f64::min);
        (self.0.len() * 8) as f64 / best / 1e9
    }
}

/// A weight variant at one shape.
enum Variant {
    Dense(Tensor),
    Sparse(SparseWeight),
}

impl Variant {
    fn bytes(&self) -> usize {
        match self {
            Variant::Dense(w) => w.size_in_bytes(),
            Variant::Sparse(s) => s.bytes(),
        }
    }
    fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Variant::Dense(w) => dense(x, w).expect("dense"),
            Variant::Sparse(s) => sparse(x, s).expect("sparse"),
        }
    }
}

/// The weight [out, in] dense and, unless `dense_only`, pruned by each pattern.
fn variants(out: usize, input: usize, dense_only: bool) -> Vec<(&'static str, Variant)> {
    let w = Tensor::from_f32(random_f32(out * input, 0.05, 7), [out, input], DType::BF16, &Device::cpu()).expect("w");
    let mut all = vec![("dense", Variant::Dense(w.clone()))];
    if dense_only {
        return all;
    }
    for (name, sparsity, nm, format) in [
        ("bitmask50", 0.5, None, SparseFormat::Bitmask),
        ("bitmask70", 0.7, None, SparseFormat::Bitmask),
        ("2:4", 0.0, Some((2, 4)), SparseFormat::NM { n: 2, m: 4 }),
    ] {
        let mask = random_mask(out, input, sparsity, nm, 11);
        all.push((name, Variant::Sparse(SparseWeight::compress(&w, &mask, format).expect("compress"))));
    }
    all
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn infer_linear(c: &mut Criterion) {
    let streamer = Streamer::new();
    let (bandwidth, load_before) = (streamer.bandwidth(), load_average());
    let shapes: [(&str, usize, usize, bool); 7] = [
        ("7b_qkvo", 4096, 4096, false),
        ("7b_up", 11008, 4096, false),
        ("7b_down", 4096, 11008, false),
        ("smol_576", 576, 576, false),
        ("smol_up", 1536, 576, false),
        ("smol_down", 576, 1536, false),
        ("smol_head", 49152, 576, true),
    ];
    // INFER_LINEAR_SHAPES=7b_up,smol_up (names as above) and INFER_LINEAR_TOKENS=1 (or 128)
    // run those only.
    let listed = |var: &str, name: &str| std::env::var(var).map_or(true, |list| list.split(',').any(|s| s == name));
    let mut summary = Vec::new();
    let mut g = c.benchmark_group("infer_linear_bf16");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for (shape, out, input, dense_only) in shapes.into_iter().filter(|s| listed("INFER_LINEAR_SHAPES", s.0)) {
        let all = variants(out, input, dense_only);
        for tokens in [1, 128].into_iter().filter(|n| listed("INFER_LINEAR_TOKENS", &n.to_string())) {
            let x = Tensor::from_f32(random_f32(tokens * input, 1.0, 3), [tokens, input], DType::BF16, &Device::cpu())
                .expect("x");
            for (name, variant) in &all {
                g.throughput(Throughput::Bytes(variant.bytes() as u64));
                g.bench_with_input(BenchmarkId::new(format!("{shape}_{out}x{input}_n{tokens}"), name), &(), |b, _| {
                    b.iter(|| variant.apply(&x))
                });
            }
            // Cold calls, variants alternating.
            let mut best = vec![f64::INFINITY; all.len()];
            for _ in 0..if tokens == 1 { 12 } else { 4 } {
                for ((_, variant), best) in all.iter().zip(&mut best) {
                    streamer.read();
                    let start = Instant::now();
                    std::hint::black_box(variant.apply(&x));
                    *best = best.min(start.elapsed().as_secs_f64());
                }
            }
            for ((name, variant), &time) in all.iter().zip(&best) {
                let gbps = variant.bytes() as f64 / time / 1e9;
                summary.push(format!(
                    "{shape:>9} {out:>5}x{input:<5} N={tokens:<3} {name:>9}: {:>9.3} ms {gbps:>6.1} GB/s ({:>3.0}% of read) {:>5.2}x dense",
                    time * 1e3,
                    100.0 * gbps / bandwidth,
                    best[0] / time,
                ));
            }
        }
    }
    g.finish();
    println!(
        "\ninfer_linear cold-call summary: {} rayon threads, CPU path {}, streaming read {bandwidth:.1} GB/s \
         (again after: {:.1}); load average {load_before} (after: {})",
        rayon::current_num_threads(),
        cpu_simd(),
        streamer.bandwidth(),
        load_average()
    );
    for line in summary {
        println!("{line}");
    }
}

criterion_group!(benches, infer_linear);
criterion_main!(benches);
