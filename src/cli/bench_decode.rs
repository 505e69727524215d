//! `sparsetune bench decode`: prefill and decode speed of the model as loaded (pruned
//! linears compressed and run by the sparse kernels) against the same weights dense,
//! interleaved in one process (`--reps` rounds, medians; in each round both prefills, then
//! decode steps in turns of 16 per variant, [`crate::infer::InferModel::generate_in_turns`]),
//! with the weight bytes one decode step reads and the machine's streaming-read bandwidth
//! measured by the bench itself.
//! One JSON line per variant: `variant` (dense | sparse), `format`,
//! `decode_tokens_per_second`, `prefill_tokens_per_second`, `weight_bytes`, `read_gbps`
//! (weight bytes × decode tokens/s), `machine_read_gbps` (the host's streaming read, the
//! fastest of three passes in each round and the median over rounds, or on CUDA the GPU's
//! read of a 2 GiB buffer), `resident_bytes` (every weight the variant holds,
//! the embedding included). The sparse line adds `decode_speedup` and `prefill_speedup`:
//! the median over rounds of sparse / dense in the same round (the ratio of the two medians
//! can pair rounds run in different states of the machine's memory speed, which moves
//! within seconds to minutes on a shared host).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::finetune::plan;
use crate::infer::{GenerateOptions, InferModel, SparseMode};
use crate::model::llama::{self, Llama, Part};
use crate::prune::select::{magnitude_pruned, Pattern};
use crate::{DType, Device, Error, Result, Tensor};

/// Arguments of `sparsetune bench decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// A model (pruned or not): compressed where its linears have zeros (`--sparse auto`).
    #[arg(long, conflicts_with = "shape")]
    model: Option<PathBuf>,
    /// Instead of --model, random weights of a known shape (llama2-7b, llama2-13b,
    /// llama3-8b, smollm2-135m, tiny), magnitude-pruned by --sparsity or --nm.
    #[arg(long)]
    shape: Option<String>,
    /// With --shape: fraction of each row's weights pruned (smallest magnitudes).
    #[arg(long, requires = "shape", conflicts_with = "nm")]
    sparsity: Option<f64>,
    /// With --shape: N:M pruning (the N largest magnitudes of every M inputs kept).
    #[arg(long, requires = "shape")]
    nm: Option<String>,
    /// With --shape: keep only the first L decoder layers (a smaller model of the same
    /// widths, where memory does not hold all of them twice).
    #[arg(long, requires = "shape")]
    layers: Option<usize>,
    /// Weight and activation dtype: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Tokens generated per measurement.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Prompt tokens before decoding (the prefill measured).
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Decode steps of one variant before the other's turn: short enough that both meet the
/// same memory conditions (they move within seconds), long enough that the switch between
/// the variants' threads and caches costs nothing measurable.
const TURN: usize = 16;

/// One variant's medians.
struct Measured {
    prefill: Vec<f64>,
    decode: Vec<f64>,
}

/// Runs `bench decode` on `device` with `reps` interleaved rounds.
pub fn run(a: DecodeArgs, device: &Device, reps: usize) -> Result<()> {
    let dtype: DType = a.dtype.parse()?;
    if !dtype.is_compute_float() {
        return Err(Error::invalid(format!("--dtype must be f32 or bf16, not {dtype}")));
    }
    if a.tokens == 0 || a.context == 0 {
        return Err(Error::invalid("--tokens and --context must be at least 1"));
    }
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(t) = a.threads {
        if t == 0 {
            return Err(Error::invalid("--threads must be at least 1"));
        }
        pool = pool.num_threads(t);
    }
    let pool = pool.build().map_err(|e| Error::invalid(format!("--threads: {e}")))?;
    let threads = pool.current_num_threads();
    pool.install(|| {
        let (model, what, sparse_mode) = build_model(&a, dtype, device)?;
        let vocab = model.config.vocab_size;
        let variants = [
            ("dense", InferModel::new(model.clone(), SparseMode::Off)?),
            ("sparse", InferModel::new(model, sparse_mode)?),
        ];
        // On the CPU the streaming read is measured in every round, beside the variants
        // (the memory's speed moves between states within minutes), and reported as the
        // median of the rounds, as the variants' speeds are.
        let probe = match device {
            Device::Cuda(_) => None,
            Device::Cpu(_) => Some(ReadProbe::new()),
        };
        let mut machine_reads = vec![];
        let prompt = prompt_tokens(a.context, vocab);
        let opts = GenerateOptions { max_new: a.tokens, stop: vec![] };
        let mut measured: Vec<Measured> =
            variants.iter().map(|_| Measured { prefill: vec![], decode: vec![] }).collect();
        for round in 0..=reps.max(1) {
            let [(_, dense), (_, sparse)] = &variants;
            let gens = dense.generate_in_turns(sparse, &prompt, &opts, TURN)?;
            if round > 0 {
                // Round 0 warms caches and the allocator.
                for (gen, m) in gens.iter().zip(&mut measured) {
                    m.prefill.push(gen.prefill_tokens_per_second());
                    m.decode.push(gen.decode_tokens_per_second());
                }
                if let Some(probe) = &probe {
                    machine_reads.push(probe.best_gbps(3));
                }
            }
        }
        let machine = match &probe {
            Some(_) => median(&mut machine_reads),
            None => device_read_gbps(device)?,
        };
        let paired = |of: fn(&Measured) -> &Vec<f64>| {
            let mut ratios: Vec<f64> = of(&measured[1]).iter().zip(of(&measured[0])).map(|(s, d)| s / d).collect();
            median(&mut ratios)
        };
        let speedups = [("decode_speedup", paired(|m| &m.decode)), ("prefill_speedup", paired(|m| &m.prefill))];
        for ((name, v), m) in variants.iter().zip(&mut measured) {
            let decode = median(&mut m.decode);
            let weight_bytes = v.weight_bytes_per_token();
            let mut line = serde_json::json!({
                    "bench": "decode", "variant": name, "format": format_of(v), "model": what,
                    "layers": v.layers.len(), "dtype": dtype.as_str(), "device": device.label(),
                    "threads": threads, "context": a.context, "tokens": a.tokens, "reps": reps.max(1),
                    "decode_tokens_per_second": decode,
                    "prefill_tokens_per_second": median(&mut m.prefill),
                    "weight_bytes": weight_bytes,
                    "resident_bytes": v.resident_bytes(),
                    "read_gbps": weight_bytes as f64 * decode / 1e9,
                    "machine_read_gbps": machine,
            });
            if *name == "sparse" {
                for (key, ratio) in speedups {
                    line[key] = ratio.into();
                }
            }
            println!("{line}");
        }
        Ok(())
    })
}

/// The model to measure, a label for the report, and the mode of its sparse variant.
fn build_model(a: &DecodeArgs, dtype: DType, device: &Device) -> Result<(Llama, String, SparseMode)> {
    if let Some(path) = &a.model {
        return Ok((llama::load(path, device, dtype)?, path.display().to_string(), SparseMode::Auto));
    }
    let shape = a.shape.as_deref().ok_or_else(|| Error::invalid("bench decode needs --model or --shape"))?;
    let mut config = plan::shape(shape)?;
    if let Some(l) = a.layers {
        if l == 0 || l > config.num_hidden_layers {
            return Err(Error::invalid(format!("--layers {l}: {shape} has {} layers", config.num_hidden_layers)));
        }
        config.num_hidden_layers = l;
    }
    let prune = match (a.sparsity, a.nm.as_deref()) {
        (Some(s), None) if (0.0..1.0).contains(&s) => Pattern::Unstructured(s),
        (Some(s), None) => return Err(Error::invalid(format!("--sparsity {s} is outside [0, 1)"))),
        (None, Some(nm)) => {
            let (n, m) = super::prune::parse_nm(nm)?;
            Pattern::NM { n, m }
        }
        _ => return Err(Error::invalid("--shape needs --sparsity S or --nm N:M")),
    };
    let model = Llama::from_named(config.clone(), |part| {
        let t = super::bench::fast_random_tensor(part, &config, DType::F32, &Device::cpu())?;
        let t = match part {
            Part::Linear(..) => magnitude_pruned(&t, prune)?,
            _ => t,
        };
        Tensor::from_f32(t.to_f32_vec()?, t.dims().to_vec(), dtype, device)
    })?;
    Ok((model, format!("{shape} random, {prune}"), SparseMode::On))
}

/// The format of a variant's decoder linears: one name, or `mixed (…)` with counts.
fn format_of(m: &InferModel) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for c in &m.choices {
        *counts.entry(c.format.as_str()).or_default() += 1;
    }
    match counts.len() {
        1 => counts.keys().next().map_or(String::new(), |k| k.to_string()),
        _ => format!("mixed ({})", counts.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")),
    }
}

/// A prompt of `n` ids spread over the vocabulary.
fn prompt_tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u64).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33) as u32 % vocab as u32).collect()
}

/// Bytes of the largest CPU cache Linux reports for cpu0 (`/sys/.../cache/index*/size`, such
/// as `491520K`); None when none can be read.
fn last_level_cache_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok())
        .filter_map(|s| parse_cache_size(s.trim()))
        .max()
}

/// `491520K` → 503316480; `32M`, `1024` (bytes). None for anything else.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.strip_suffix('K') {
        Some(d) => (d, 1usize << 10),
        None => match s.strip_suffix('M') {
            Some(d) => (d, 1 << 20),
            None => (s, 1),
        },
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// The median (of an even count, the mean of the two middle values); NaN when empty.
pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The host's streaming read: a buffer four times the last-level cache (at least 1 GiB, at
/// most 8 GiB), summed with the current pool's threads. A buffer that fits the cache in
/// good part would measure the cache.
struct ReadProbe {
    buf: Vec<u64>,
}

impl ReadProbe {
    fn new() -> Self {
        use rayon::prelude::*;
        let bytes = last_level_cache_bytes().map_or(1 << 30, |c| c.saturating_mul(4).clamp(1 << 30, 8 << 30));
        ReadProbe { buf: (0..(bytes / 8) as u64).into_par_iter().map(|i| i.wrapping_mul(0x9e37_79b9)).collect() }
    }

    /// GB/s of the fastest of `passes` sums of the buffer: the memory read bandwidth a
    /// decode step's weight reads can reach.
    fn best_gbps(&self, passes: usize) -> f64 {
        use rayon::prelude::*;
        let mut best = 0f64;
        for _ in 0..passes {
            let t = Instant::now();
            let sum = self
                .buf
                .par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
                .reduce(|| 0, u64::wrapping_add);
            std::hint::black_box(sum);
            best = best.max((self.buf.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        best
    }
}

/// GB/s of reading a 2 GiB bf16 buffer on a GPU once (the sum of its squares, best of 5; the
/// result's copy to the host is included): the read bandwidth the decode kernels can reach.
fn device_read_gbps(device: &Device) -> Result<f64> {
    let n = 1usize << 30;
    let buf = Tensor::zeros([n], DType::BF16, device)?;
    crate::ops::adamw::sum_squares(&buf)?; // warm-up
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(crate::ops::adamw::sum_squares(&buf)?);
        best = best.max((2 * n) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::{median, parse_cache_size};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [5.0]), 5.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn cache_sizes_parse_as_linux_writes_them() {
        assert_eq!(parse_cache_size("491520K"), Some(491_520 * 1024));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("4096"), Some(4096));
        for bad in ["", "K", "12G", "-1K", "1.5M", "99999999999999999999K"] {
            assert_eq!(parse_cache_size(bad), None, "{bad:?}");
        }
    }
}
