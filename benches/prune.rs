//! SparseGPT's linear algebra and the whole GPU prune, at LLaMA-7B widths.
//! - `cholesky_inverse_factor/{cpu,gpu}/<n>`: U with H⁻¹ = UᵀU for H [n, n], n = 4096 (hidden)
//!   and 11008 (MLP); CPU `prune::linalg::inverse_cholesky_upper`, GPU
//!   `ops::sparsegpt::inverse_cholesky_upper`.
//! - `sparsegpt_prune_gpu/{unstructured50,2to4}/<rows>x<cols>`: `prune::sparsegpt::prune_cuda` of one
//!   weight [4096, 4096] (q/k/v/o_proj) and [4096, 11008] (down_proj), f64, block size 128;
//!   each iteration first restores W (a device copy, negligible next to the prune).
//!
//! H is a random diagonally dominant SPD matrix (the timings do not depend on its values).
//! The GPU closures synchronise the device. The CPU factor is measured only with
//! `SPARSETUNE_BENCH_CPU=1`: about 4 s per run at 4096 and 50 s at 11008 on 2 cores, times
//! 11 runs. `cargo bench --bench prune -- gpu`
//! selects the GPU groups alone.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use sparsetune::linalg;
use sparsetune::ops::sparsegpt;
use sparsetune::prune::{Pattern, SparseGptOptions};
use sparsetune::testing::random_f64;
use sparsetune::Device;

const SIZES: [usize; 2] = [4096, 11008];

/// Symmetric, off-diagonal entries uniform in [-1, 1), diagonal n: SPD by diagonal dominance.
fn spd(n: usize, seed: u64) -> Vec<f64> {
    let mut h = random_f64(n * n, 1.0, seed);
    for i in 0..n {
        for j in 0..i {
            h[j * n + i] = h[i * n + j];
        }
        h[i * n + i] = n as f64;
    }
    h
}

fn cpu_factor(c: &mut Criterion) {
    if std::env::var("SPARSETUNE_BENCH_CPU").as_deref() != Ok("1") {
        eprintln!("skipped: cholesky_inverse_factor/cpu (set SPARSETUNE_BENCH_CPU=1; minutes per run)");
        return;
    }
    let mut g = c.benchmark_group("cholesky_inverse_factor");
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    for n in SIZES {
        let h = spd(n, 1);
        g.bench_with_input(BenchmarkId::new("cpu", n), &n, |bench, &n| {
            bench.iter(|| linalg::inverse_cholesky_upper(h.clone(), n).expect("cpu factor"))
        });
    }
    g.finish();
}

fn gpu_benches(c: &mut Criterion) {
    let Ok(Device::Cuda(dev)) = Device::cuda(0) else {
        eprintln!("skipped: no CUDA device for the GPU SparseGPT benches");
        return;
    };
    let mut g = c.benchmark_group("cholesky_inverse_factor");
    g.sample_size(10);
    for n in SIZES {
        let h = dev.htod(&spd(n, 1)).expect("upload H");
        g.bench_with_input(BenchmarkId::new("gpu", n), &n, |bench, &n| {
            bench.iter(|| {
                let u = sparsegpt::inverse_cholesky_upper(&dev, h.slice(), n).expect("gpu factor");
                dev.synchronize().expect("sync");
                u
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("sparsegpt_prune_gpu");
    g.sample_size(10);
    let rows = 4096;
    for cols in SIZES {
        let h = dev.htod(&spd(cols, 2)).expect("upload H");
        let w0 = dev.htod(&random_f64(rows * cols, 1.0, 3)).expect("upload W");
        let mut w = dev.alloc::<f64>(rows * cols).expect("alloc W");
        for (name, pattern) in [("unstructured50", Pattern::Unstructured(0.5)), ("2to4", Pattern::NM { n: 2, m: 4 })] {
            g.bench_with_input(BenchmarkId::new(name, format!("{rows}x{cols}")), &pattern, |bench, &pattern| {
                bench.iter(|| {
                    dev.stream().memcpy_dtod(w0.slice(), w.slice_mut()).expect("restore W");
                    let mask = sparsetune::prune::sparsegpt::prune_cuda(
                        &dev,
                        w.slice_mut(),
                        h.slice(),
                        rows,
                        cols,
                        pattern,
                        SparseGptOptions::default(),
                    )
                    .expect("gpu prune");
                    dev.synchronize().expect("sync");
                    mask
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, cpu_factor, gpu_benches);
criterion_main!(benches);
