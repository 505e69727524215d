//! Forward throughput of the default model (SmolLM2-135M, f32) on one window of 512
//! tokens: criterion's elements/s column reads as tokens/s. CPU always; CUDA (f32 and
//! bf16) when a GPU is present. Skips when the model asset is missing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sparsetune::model::llama::{self, ForwardOptions};
use sparsetune::{DType, Device, Tensor};

fn forward(c: &mut Criterion) {
    let Some(path) = sparsetune::io::asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let seq = 512usize;
    let ids: Vec<u32> = (0..seq as u32).map(|i| (i * 7919) % 49152).collect();
    let mut g = c.benchmark_group("smollm2_135m_forward_seq512");
    g.sample_size(10);
    g.throughput(Throughput::Elements(seq as u64));
    let mut devices = vec![(Device::cpu(), DType::F32, "cpu_f32")];
    if let Ok(gpu) = Device::cuda(0) {
        devices.push((gpu.clone(), DType::F32, "cuda_f32"));
        devices.push((gpu, DType::BF16, "cuda_bf16"));
    }
    for (dev, dtype, label) in devices {
        let model = llama::load(&path, &dev, dtype).expect("load model");
        let x = Tensor::from_vec(ids.clone(), [1, seq], &dev).expect("ids");
        g.bench_function(label, |b| {
            b.iter(|| {
                let y = model.forward(None, &x, ForwardOptions::default()).expect("forward");
                dev.synchronize().expect("sync");
                y
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
