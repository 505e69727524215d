//! `sparsetune bench`: timings of single kernels at chosen sizes, median of `--reps` runs
//! after one warm-up, one JSON object per line on stdout. For sizes where criterion's
//! minimum of ten samples would take minutes (CPU Cholesky at 11008).

use std::time::Instant;

use clap::{Args, Subcommand};

use crate::device::CudaDevice;
use crate::finetune::plan::{self, PlanInput};
use crate::finetune::{adapter_params, attach_masked_lora, LoraOptions, RepairMethod, TrainConfig, TrainData, Trainer};
use crate::linalg;
use crate::model::llama::{Llama, LlamaConfig, Part, Proj};
use crate::nn::Linear;
use crate::ops::masked_lora::AdapterGrad;
use crate::prune::{prune_model, sparsegpt, Method, Pattern, PruneOptions, SparseGptOptions};
use crate::sparse::SparseFormat;
use crate::testing::random_f64;
use crate::{DType, Device, Error, Result, Tensor};

/// Arguments of `sparsetune bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu", global = true)]
    device: String,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3, global = true)]
    reps: usize,
}

#[derive(Subcommand, Debug)]
enum BenchKind {
    /// Writes a random model of a known shape as a Hugging Face directory (sharded, a
    /// tensor at a time, so a 7B model needs the memory of one tensor), with a byte-level
    /// tokenizer: the input of the bounded-memory pruning benchmark. Prints one JSON line.
    MakeModel {
        /// A known shape (llama2-7b, llama2-13b, llama3-8b, smollm2-135m, tiny).
        #[arg(long, default_value = "llama2-7b")]
        shape: String,
        /// Stored dtype: bf16, f16 or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Largest shard (e.g. 5GB).
        #[arg(long, default_value = "5GB")]
        max_shard_size: String,
        /// Output directory.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Replace an --out directory that an earlier `bench make-model` did not write
        /// (another model's files only).
        #[arg(long)]
        overwrite: bool,
    },
    /// Prefill and decode tokens/s of a model as loaded (pruned linears compressed) against
    /// the same weights dense, interleaved; one JSON line per variant.
    Decode(super::bench_decode::DecodeArgs),
    /// Upper Cholesky factor of H⁻¹ (SparseGPT's step 3) for an n×n SPD matrix.
    Cholesky {
        /// Matrix size.
        #[arg(long, default_value_t = 4096)]
        n: usize,
    },
    /// SparseGPT on one random [rows, cols] weight with a random SPD Hessian.
    Sparsegpt {
        /// Output rows.
        #[arg(long, default_value_t = 4096)]
        rows: usize,
        /// Input columns.
        #[arg(long, default_value_t = 4096)]
        cols: usize,
        /// "0.5" (unstructured) or "2:4".
        #[arg(long, default_value = "0.5")]
        pattern: String,
    },
    /// Masked-LoRA linear (50% unstructured bitmask or 2:4 base, bf16 on CUDA) against the
    /// plain GEMMs it contains (forward: one, backward: two), measured in the same run.
    MaskedLora {
        /// Tokens (rows of x).
        #[arg(long, default_value_t = 2048)]
        tokens: usize,
        /// Input features.
        #[arg(long, default_value_t = 4096)]
        input: usize,
        /// Output features.
        #[arg(long, default_value_t = 4096)]
        output: usize,
        /// LoRA rank.
        #[arg(long, default_value_t = 16)]
        rank: usize,
        /// "0.5" (bitmask) or "2:4" (N:M base).
        #[arg(long, default_value = "0.5")]
        pattern: String,
    },
    /// Causal GQA attention forward and backward (dq, dk, dv) on random bf16 (CUDA) or f32
    /// (CPU) q, k, v: seconds and TFLOP/s (causal: forward 2·B·Hq·T²·D multiply-adds, backward
    /// 2.5× that), on CUDA for the tensor-core and the flash kernels; one JSON line each.
    Attention {
        /// Batch entries.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Sequence length T.
        #[arg(long, default_value_t = 2048)]
        seq: usize,
        /// Query heads.
        #[arg(long, default_value_t = 32)]
        heads: usize,
        /// Key/value heads (dividing --heads).
        #[arg(long, default_value_t = 32)]
        kv_heads: usize,
        /// Head dimension D.
        #[arg(long, default_value_t = 128)]
        head_dim: usize,
    },
    /// Pruning a random model of a known shape with calibration (all decoder layers,
    /// sequential, calibration forward included): seconds and peak memory.
    Prune {
        /// A known shape (llama2-7b, llama2-13b, llama3-8b, smollm2-135m, tiny).
        #[arg(long, default_value = "llama2-7b")]
        shape: String,
        /// wanda, sparsegpt, ria or magnitude.
        #[arg(long, default_value = "wanda")]
        method: String,
        /// "0.5" (unstructured) or "2:4".
        #[arg(long, default_value = "0.5")]
        pattern: String,
        /// Calibration windows.
        #[arg(long, default_value_t = 128)]
        samples: usize,
        /// Tokens per calibration window.
        #[arg(long, default_value_t = 2048)]
        seq_len: usize,
    },
    /// One full training step (forward, backward, AdamW) of masked-lora and/or lors on a
    /// random model of a known shape, magnitude-pruned to the pattern (one model for every
    /// combination): tokens/s over `--reps` steps after one warm-up step, measured and
    /// planned peak memory, one JSON line per (method, checkpointing).
    Step {
        /// A known shape (llama2-7b, llama2-13b, llama3-8b, smollm2-135m, tiny).
        #[arg(long, default_value = "llama2-7b")]
        shape: String,
        /// Comma-separated: masked-lora, lors (LoRS's initialisation is not timed).
        #[arg(long, default_value = "masked-lora,lors")]
        methods: String,
        /// "0.5" (bitmask) or "2:4" (N:M base).
        #[arg(long, default_value = "0.5")]
        pattern: String,
        /// Adapter rank (alpha = 2·rank).
        #[arg(long, default_value_t = 16)]
        rank: usize,
        /// Tokens per window.
        #[arg(long, default_value_t = 2048)]
        seq_len: usize,
        /// Windows per step.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Comma-separated activation checkpointing settings: on, off.
        #[arg(long, default_value = "on,off")]
        checkpointing: String,
        /// After the timed steps, one more with the device synchronised at every op: one
        /// more JSON line (`train_step_ops`) with seconds per (op, phase), largest first.
        /// Checkpointed layers count as one op (`checkpoint`).
        #[arg(long)]
        profile: bool,
    },
}

/// A well-conditioned SPD matrix: I·n + R·Rᵀ/n with R [n, 64] random.
fn spd(n: usize) -> Vec<f64> {
    let k = 64;
    let r = random_f64(n * k, 1.0, 7);
    let mut h = vec![0f64; n * n];
    linalg::gemm_f64(n, n, k, &mut h, n, false, 1.0 / k as f64, &r, k, false, &r, k, true);
    for i in 0..n {
        h[i * n + i] += 1.0;
    }
    h
}

/// The median seconds of `reps` calls of `f` (at least one) after a first call that is not
/// timed; of an even count, the mean of the two middle times.
fn median_seconds(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(super::bench_decode::median(&mut t))
}

fn cuda(device: &Device) -> Option<&CudaDevice> {
    match device {
        Device::Cuda(d) => Some(d),
        Device::Cpu(_) => None,
    }
}

/// Runs `bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    let device = Device::from_name(&a.device)?;
    match a.what {
        BenchKind::MakeModel { shape, dtype, max_shard_size, out, overwrite } => {
            make_model(&shape, &dtype, &max_shard_size, &out, overwrite)?
        }
        BenchKind::Decode(d) => super::bench_decode::run(d, &device, a.reps)?,
        BenchKind::Cholesky { n } => {
            let h = spd(n);
            let secs = match cuda(&device) {
                None => median_seconds(a.reps, || linalg::inverse_cholesky_upper(h.clone(), n).map(drop))?,
                Some(dev) => {
                    let hd = dev.htod(&h)?;
                    median_seconds(a.reps, || {
                        crate::ops::sparsegpt::inverse_cholesky_upper(dev, hd.slice(), n)?;
                        dev.synchronize()
                    })?
                }
            };
            // Flops of the route taken: each of Cholesky, triangular inverse and the symmetric
            // L⁻ᵀL⁻¹ is n³/3. CPU: Cholesky + inverse (reversed order); CUDA: SparseGPT's
            // Cholesky + inverse + L⁻ᵀL⁻¹ + Cholesky.
            let steps = if cuda(&device).is_some() { 4.0 } else { 2.0 };
            let gflop = steps * (n as f64).powi(3) / 3.0 / 1e9;
            println!(
                "{}",
                serde_json::json!({"bench": "cholesky_inverse_factor", "n": n, "device": device.label(),
                    "seconds": secs, "gflop_per_s": gflop / secs})
            );
        }
        BenchKind::MaskedLora { tokens, input, output, rank, pattern } => {
            masked_lora_bench(&device, a.reps, tokens, input, output, rank, &pattern)?;
        }
        BenchKind::Attention { batch, seq, heads, kv_heads, head_dim } => {
            let d = crate::ops::attention::Dims { batch, seq, q_heads: heads, kv_heads, head_dim };
            attention_bench(&device, a.reps, d)?;
        }
        BenchKind::Prune { shape, method, pattern, samples, seq_len } => {
            let pattern = parse_pattern(&pattern)?;
            let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
            let config = plan::shape(&shape)?;
            let mut model = fast_random_model(&config, dtype, &device)?;
            let calib: Vec<Vec<u32>> =
                (0..samples).map(|s| token_stream(seq_len, config.vocab_size, s as u64)).collect();
            device.synchronize()?;
            device.reset_peak_memory();
            let start = Instant::now();
            let report = prune_model(&mut model, &calib, &PruneOptions::new(method.parse()?, pattern), &mut |_| {})?;
            device.synchronize()?;
            println!(
                "{}",
                serde_json::json!({"bench": "prune_model", "device": device.label(), "dtype": dtype.as_str(),
                    "shape": shape, "method": method, "pattern": pattern.to_string(), "samples": samples,
                    "seq_len": seq_len, "seconds": start.elapsed().as_secs_f64(),
                    "sparsity": report.overall_sparsity, "peak_bytes": device.memory().peak_bytes})
            );
        }
        BenchKind::Step { shape, methods, pattern, rank, seq_len, batch, checkpointing, profile } => {
            let methods = methods.split(',').map(str::parse).collect::<Result<Vec<RepairMethod>>>()?;
            let ckpt = checkpointing
                .split(',')
                .map(|c| match c {
                    "on" => Ok(true),
                    "off" => Ok(false),
                    other => Err(Error::invalid(format!("--checkpointing takes on/off, not '{other}'"))),
                })
                .collect::<Result<Vec<bool>>>()?;
            step_bench(&device, a.reps, &shape, &methods, &pattern, rank, (seq_len, batch), &ckpt, profile)?;
        }
        BenchKind::Sparsegpt { rows, cols, pattern } => {
            let pattern = parse_pattern(&pattern)?;
            let h = spd(cols);
            let w = random_f64(rows * cols, 1.0, 8);
            let opts = SparseGptOptions::default();
            let secs = match cuda(&device) {
                None => median_seconds(a.reps, || {
                    let mut w = w.clone();
                    sparsegpt::prune(&mut w, h.clone(), rows, cols, pattern, opts).map(drop)
                })?,
                Some(dev) => {
                    let (hd, w0) = (dev.htod(&h)?, dev.htod(&w)?);
                    let mut wd = dev.alloc::<f64>(rows * cols)?;
                    median_seconds(a.reps, || {
                        dev.stream().memcpy_dtod(w0.slice(), wd.slice_mut())?;
                        sparsegpt::prune_cuda(dev, wd.slice_mut(), hd.slice(), rows, cols, pattern, opts)?;
                        dev.synchronize()
                    })?
                }
            };
            println!(
                "{}",
                serde_json::json!({"bench": "sparsegpt_prune", "rows": rows, "cols": cols, "pattern": pattern.to_string(),
                    "device": device.label(), "seconds": secs})
            );
        }
    }
    Ok(())
}

fn masked_lora_bench(
    device: &Device,
    reps: usize,
    tokens: usize,
    input: usize,
    output: usize,
    rank: usize,
    pattern: &str,
) -> Result<()> {
    use crate::ops::masked_lora::{backward, forward};
    use crate::sparse::{BitMask, SparseWeight};
    use rand::{Rng, SeedableRng};
    let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
    let format = if pattern == "2:4" { SparseFormat::NM { n: 2, m: 4 } } else { SparseFormat::Bitmask };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mask = match format {
        SparseFormat::NM { .. } => BitMask::from_fn(output, input, |r, c| (c % 4 < 2) ^ (r % 2 == 1)),
        SparseFormat::Bitmask => BitMask::from_fn(output, input, |_, _| rng.random::<bool>()),
    };
    let w = Tensor::randn([output, input], 0.02, dtype, &Device::cpu(), 1)?;
    let base = SparseWeight::compress(&w, &mask, format)?.to_device(device)?;
    let dense = base.to_dense()?;
    let x = Tensor::randn([tokens, input], 1.0, dtype, device, 2)?;
    let a = Tensor::randn([rank, input], 0.02, dtype, device, 3)?;
    let b = Tensor::randn([output, rank], 0.02, dtype, device, 4)?;
    let dy = Tensor::randn([tokens, output], 1.0, dtype, device, 5)?;
    let sync = || device.synchronize();
    let gemm =
        median_seconds(reps, || crate::ops::matmul::forward(&x, &dense, false, true).map(drop).and_then(|_| sync()))?;
    let gemm_dx =
        median_seconds(reps, || crate::ops::matmul::forward(&dy, &dense, false, false).map(drop).and_then(|_| sync()))?;
    let gemm_g =
        median_seconds(reps, || crate::ops::matmul::forward(&dy, &x, true, false).map(drop).and_then(|_| sync()))?;
    drop(dense);
    let fwd = median_seconds(reps, || forward(&x, &base, &a, &b, 2.0).map(drop).and_then(|_| sync()))?;
    let exact = median_seconds(reps, || {
        backward(&x, &base, &a, &b, &dy, 2.0, AdapterGrad::Exact, true, true).map(drop).and_then(|_| sync())
    })?;
    let rearr = median_seconds(reps, || {
        backward(&x, &base, &a, &b, &dy, 2.0, AdapterGrad::Rearranged, true, true).map(drop).and_then(|_| sync())
    })?;
    let flop = 2.0 * (tokens * input * output) as f64;
    println!(
        "{}",
        serde_json::json!({"bench": "masked_lora", "device": device.label(), "dtype": dtype.as_str(), "tokens": tokens,
            "input": input, "output": output, "rank": rank, "base": pattern,
            "gemm_seconds": gemm, "gemm_tflops": flop / gemm / 1e12,
            "forward_seconds": fwd, "forward_vs_gemm": gemm / fwd,
            "backward_exact_seconds": exact, "backward_exact_vs_gemms": (gemm_dx + gemm_g) / exact,
            "backward_rearranged_seconds": rearr, "backward_rearranged_vs_dx_gemm": gemm_dx / rearr})
    );
    Ok(())
}

fn attention_bench(device: &Device, reps: usize, d: crate::ops::attention::Dims) -> Result<()> {
    use crate::ops::attention::{backward_with, forward_with, CudaKernels};
    let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
    let q_shape = [d.batch, d.seq, d.q_heads, d.head_dim];
    let kv_shape = [d.batch, d.seq, d.kv_heads, d.head_dim];
    let q = Tensor::randn(q_shape, 1.0, dtype, device, 1)?;
    let k = Tensor::randn(kv_shape, 1.0, dtype, device, 2)?;
    let v = Tensor::randn(kv_shape, 1.0, dtype, device, 3)?;
    let d_o = Tensor::randn(q_shape, 1.0, dtype, device, 4)?;
    let kernels: &[CudaKernels] = if device.is_cuda() {
        if d.head_dim <= crate::ops::attention::cuda::MAX_HEAD_DIM {
            &[CudaKernels::TensorCores, CudaKernels::Flash]
        } else {
            &[CudaKernels::TensorCores]
        }
    } else {
        &[CudaKernels::Auto]
    };
    // Multiply-adds of the causal products, as FlashAttention counts them: forward 2 products
    // of T²·D over half the square, times 2 flops each; backward 2.5× the forward.
    let fwd_flop = 2.0 * (d.batch * d.q_heads * d.head_dim) as f64 * (d.seq as f64).powi(2);
    let bwd_flop = 2.5 * fwd_flop;
    for &kind in kernels {
        let sync = || device.synchronize();
        device.synchronize()?;
        device.reset_peak_memory();
        let base = device.memory().current_bytes;
        let fwd = median_seconds(reps, || forward_with(&q, &k, &v, kind).map(drop).and_then(|_| sync()))?;
        let (o, lse) = forward_with(&q, &k, &v, kind)?;
        let bwd = median_seconds(reps, || {
            backward_with(&q, &k, &v, &o, &lse, &d_o, [true; 3], kind).map(drop).and_then(|_| sync())
        })?;
        let path = match kind {
            CudaKernels::TensorCores => "tensor-cores",
            CudaKernels::Flash => "flash",
            CudaKernels::Auto => "cpu",
        };
        println!(
            "{}",
            serde_json::json!({"bench": "attention", "device": device.label(), "dtype": dtype.as_str(), "kernels": path,
                "batch": d.batch, "seq": d.seq, "heads": d.q_heads, "kv_heads": d.kv_heads, "head_dim": d.head_dim,
                "forward_seconds": fwd, "forward_tflops": fwd_flop / fwd / 1e12,
                "backward_seconds": bwd, "backward_tflops": bwd_flop / bwd / 1e12,
                "forward_backward_tflops": (fwd_flop + bwd_flop) / (fwd + bwd) / 1e12,
                "peak_transient_bytes": device.memory().peak_bytes.saturating_sub(base)})
        );
    }
    Ok(())
}

/// "0.5" (unstructured) or "N:M".
fn parse_pattern(s: &str) -> Result<Pattern> {
    let bad = || Error::invalid(format!("bad --pattern '{s}' (a sparsity like 0.5, or N:M)"));
    Ok(match s.split_once(':') {
        Some((n, m)) => Pattern::NM { n: n.parse().map_err(|_| bad())?, m: m.parse().map_err(|_| bad())? },
        None => Pattern::Unstructured(s.parse().map_err(|_| bad())?),
    })
}

/// `n` pseudo-random token ids below `vocab` (a multiplicative hash of the position).
fn token_stream(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i.wrapping_add(seed << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) % vocab as u64) as u32)
        .collect()
}

/// `part`'s weights for `config`: matrices uniform in ±0.035 (about N(0, 0.02)'s spread),
/// norms 1, filled in parallel from a hash of the name and position (a 7B model in
/// seconds, where the seeded Gaussian generator takes minutes).
pub(super) fn fast_random_tensor(part: &Part, config: &LlamaConfig, dtype: DType, device: &Device) -> Result<Tensor> {
    use rayon::prelude::*;
    let shape = part.shape(config);
    let n: usize = shape.iter().product();
    let salt =
        part.hf_name().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut v = vec![0f32; n];
    if shape.len() == 1 {
        v.fill(1.0);
    } else {
        v.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
            for (i, x) in chunk.iter_mut().enumerate() {
                let mut z = salt ^ ((c << 16) + i) as u64;
                // splitmix64
                z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                *x = ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.035;
            }
        });
    }
    Tensor::from_f32(v, shape, dtype, device)
}

/// A model of `config` with [`fast_random_tensor`] weights.
fn fast_random_model(config: &LlamaConfig, dtype: DType, device: &Device) -> Result<Llama> {
    Llama::from_named(config.clone(), |part| fast_random_tensor(part, config, dtype, device))
}

/// `bench make-model`: the random model written a tensor at a time, after checking `out`
/// ([`crate::io::outputs::OutputPlan`]).
fn make_model(shape: &str, dtype: &str, max_shard: &str, out: &std::path::Path, overwrite: bool) -> Result<()> {
    use crate::io::outputs::{role, OutputKind, OutputPlan, META_WRITTEN_BY};
    use crate::model::llama::{hf_dir::parse_size, ModelWriter, OutputForm, OutputSpec};
    let start = Instant::now();
    let dtype: DType = dtype.parse()?;
    let config = plan::shape(shape)?;
    OutputPlan::new(overwrite).output("--out", out, OutputKind::ModelDir, role::MAKE_MODEL).check()?;
    let tokenizer = crate::io::Tokenizer::byte_level()?;
    let metadata = [(META_WRITTEN_BY.to_string(), role::MAKE_MODEL.to_string())].into();
    let spec = OutputSpec { config: &config, source: None, tokenizer: &tokenizer, dtype, metadata };
    let mut w = ModelWriter::create(out, OutputForm::Directory { max_shard_bytes: parse_size(max_shard)? }, spec)?;
    let parts = Part::all(&config);
    let pb = super::progress::bar(parts.len() as u64, "make-model");
    let cpu = Device::cpu();
    for part in &parts {
        w.put(part, &fast_random_tensor(part, &config, dtype, &cpu)?)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    w.finish(Default::default())?;
    let bytes: u64 =
        parts.iter().map(|p| (p.shape(&config).iter().product::<usize>() * dtype.size_in_bytes()) as u64).sum();
    println!(
        "{}",
        serde_json::json!({"bench": "make_model", "shape": shape, "dtype": dtype.as_str(), "out": out.display().to_string(),
            "bytes": bytes, "seconds": start.elapsed().as_secs_f64(), "peak_rss_bytes": super::peak_rss_bytes()})
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn step_bench(
    device: &Device,
    reps: usize,
    shape: &str,
    methods: &[RepairMethod],
    pattern: &str,
    rank: usize,
    (seq_len, batch): (usize, usize),
    checkpointing: &[bool],
    profile: bool,
) -> Result<()> {
    if let Some(m) = methods.iter().find(|m| !matches!(m, RepairMethod::MaskedLora | RepairMethod::Lors)) {
        return Err(Error::invalid(format!("bench step times masked-lora and lors, not {m}")));
    }
    let pat = parse_pattern(pattern)?;
    let format = match pat {
        Pattern::NM { n, m } => SparseFormat::NM { n, m },
        Pattern::Unstructured(_) => SparseFormat::Bitmask,
    };
    let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
    let config = plan::shape(shape)?;
    let t0 = Instant::now();
    let mut dense = fast_random_model(&config, dtype, device)?;
    prune_model(&mut dense, &[], &PruneOptions::new(Method::Magnitude, pat), &mut |_| {})?;
    let mut lora = LoraOptions::new(rank, 2.0 * rank as f32);
    lora.format = format;
    let sparsity = pat.sparsity();
    let adapted = attach_masked_lora(&dense, lora)?;
    drop(dense);
    let setup = t0.elapsed().as_secs_f64();
    let steps = reps + 1 + usize::from(profile);
    let data = TrainData::new(&[token_stream(steps * batch * (seq_len + 1), config.vocab_size, 0)], seq_len)?;
    for &method in methods {
        for &ckpt in checkpointing {
            let mut model = adapted.clone(); // shares the base; the adapters train in place
            let grad = if method == RepairMethod::Lors { AdapterGrad::Rearranged } else { AdapterGrad::Exact };
            for layer in &mut model.layers {
                for p in Proj::ALL {
                    if let Linear::MaskedLora(l) = layer.linear_mut(p) {
                        l.grad = grad;
                    }
                }
            }
            let mut cfg = TrainConfig::new(steps);
            (cfg.seq_len, cfg.batch, cfg.checkpoint_layers, cfg.warmup) = (seq_len, batch, ckpt, 0.0);
            let planned = plan::plan(&PlanInput {
                config: config.clone(),
                sparsity,
                nm: match format {
                    SparseFormat::NM { n, m } => Some((n, m)),
                    SparseFormat::Bitmask => None,
                },
                dtype,
                seq_len,
                batch,
                rank,
                checkpointing: ckpt,
                cuda: device.is_cuda(),
                method,
                calib_samples: 0,
            })?
            .total_bytes;
            let params = adapter_params(&model);
            let mut trainer = Trainer::new(model, params, cfg)?;
            device.synchronize()?;
            device.reset_peak_memory();
            trainer.train_step(&data)?; // warm-up
            device.synchronize()?;
            let start = Instant::now();
            for _ in 0..reps {
                trainer.train_step(&data)?;
            }
            device.synchronize()?;
            let secs = start.elapsed().as_secs_f64() / reps.max(1) as f64;
            println!(
                "{}",
                serde_json::json!({"bench": "train_step", "device": device.label(), "dtype": dtype.as_str(),
                    "shape": shape, "method": method.name(), "pattern": pattern, "rank": rank, "seq_len": seq_len,
                    "batch": batch, "checkpointing": ckpt, "steps_timed": reps, "seconds_per_step": secs,
                    "tokens_per_second": (seq_len * batch) as f64 / secs, "peak_bytes": device.memory().peak_bytes,
                    "planned_peak_bytes": planned, "setup_seconds": setup,
                    "last_loss": trainer.history.last().map(|r| r.loss)})
            );
            if profile {
                let prof = crate::autograd::Profile::new(device);
                trainer.profile = Some(prof.clone());
                let record = trainer.train_step(&data)?;
                let ops: Vec<serde_json::Value> = prof
                    .table()
                    .into_iter()
                    .map(|(op, phase, t)| serde_json::json!({"op": op, "phase": phase.name(), "calls": t.calls, "seconds": t.seconds}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"bench": "train_step_ops", "device": device.label(), "dtype": dtype.as_str(),
                        "shape": shape, "method": method.name(), "pattern": pattern, "checkpointing": ckpt,
                        "profiled_step_seconds": record.seconds, "ops": ops})
                );
            }
        }
    }
    Ok(())
}
