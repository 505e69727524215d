//! Matmul throughput, reported by criterion as elements/s where one element is one FLOP
//! (2·m·n·k per product), i.e. the "Gelem/s" column reads as GFLOP/s.
//! CPU: the gemm-crate path at the SmolLM2 MLP shape (512 tokens × 576 → 1536) and at
//! 4096³, and the naive reference at a small size for scale. CUDA (when a GPU is
//! present): cuBLAS f32 and bf16 at 2048 tokens × (4096→4096, 4096→11008, 11008→4096);
//! the timed closure synchronises the device.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sparsetune::ops::matmul::{cpu, forward, Dims};
use sparsetune::testing::random_f32;
use sparsetune::{DType, Device, Tensor};

fn dims(m: usize, n: usize, k: usize) -> Dims {
    Dims { batch: 1, m, n, k, trans_a: false, trans_b: true, b_batched: false }
}

fn cpu_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_matmul_f32");
    g.sample_size(10);
    for (m, n, k) in [(512, 1536, 576), (512, 576, 1536), (4096, 4096, 4096)] {
        let (a, b) = (random_f32(m * k, 1.0, 1), random_f32(n * k, 1.0, 2));
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_with_input(BenchmarkId::new("gemm_crate", format!("{m}x{n}x{k}")), &(), |bench, _| {
            bench.iter(|| cpu::fast(&a, &b, &mut out, dims(m, n, k), 1.0, false))
        });
    }
    let (m, n, k) = (64, 1536, 576);
    let (a, b) = (random_f32(m * k, 1.0, 1), random_f32(n * k, 1.0, 2));
    let mut out = vec![0f32; m * n];
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    g.bench_with_input(BenchmarkId::new("naive_reference", format!("{m}x{n}x{k}")), &(), |bench, _| {
        bench.iter(|| cpu::reference(&a, &b, &mut out, dims(m, n, k)))
    });
    g.finish();
}

fn cuda_gemm(c: &mut Criterion) {
    let Ok(gpu) = Device::cuda(0) else {
        eprintln!("skipped: no CUDA device for the cuBLAS benches");
        return;
    };
    let mut g = c.benchmark_group("cuda_matmul");
    for dtype in [DType::BF16, DType::F32] {
        for (m, n, k) in [(2048, 4096, 4096), (2048, 11008, 4096), (2048, 4096, 11008)] {
            let x = Tensor::randn([m, k], 1.0, dtype, &gpu, 1).expect("x");
            let w = Tensor::randn([n, k], 1.0, dtype, &gpu, 2).expect("w");
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_with_input(BenchmarkId::new(format!("cublas_{dtype}"), format!("{m}x{n}x{k}")), &(), |bench, _| {
                bench.iter(|| {
                    let y = forward(&x, &w, false, true).expect("matmul");
                    gpu.synchronize().expect("sync");
                    y
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, cpu_gemm, cuda_gemm);
criterion_main!(benches);
