//! Post-training pruning of LLaMA models: magnitude, Wanda, SparseGPT and RIA, unstructured
//! or N:M, with uniform, OWL, ATP or explicit layer-wise sparsity, and DSnoT on top.
//!
//! [`prune_model`] runs the reference pipeline (locuslab/wanda `prune_wanda`,
//! IST-DASLab/sparsegpt `llama_sequential`): embed the calibration samples, then for each
//! decoder layer: observe the inputs of its seven linears over all samples
//! ([`calib::Activations::observe`]), prune all seven, and re-run the pruned layer to
//! produce the next layer's inputs. Embeddings and the LM head are not pruned.
//! [`prune_layers`] is the same pipeline over a [`LayerStore`]: the layers may live in a
//! model in memory, or be read from the files one at a time and written out as they are
//! pruned, so that a model larger than memory prunes in the memory of one layer.
//!
//! Pattern semantics: `N:M` keeps N of every M consecutive inputs of a row (2:4 keeps 2).
//! The reference repositories' `N:M` arguments count the pruned weights; for 2:4 and 4:8
//! the two readings coincide.

pub mod allocation;
pub mod calib;
pub mod dsnot;
pub mod select;
pub mod sparsegpt;

use std::time::Instant;

use serde::Serialize;

pub use allocation::Allocation;
pub use dsnot::DsnotOptions;
pub use select::Pattern;
pub use sparsegpt::SparseGptOptions;

use crate::model::llama::{DecoderLayer, Llama, LlamaConfig, Proj};
use crate::nn::Linear;
use crate::ops::prune_select::cpu as scores;
use crate::sparse::{BitMask, SparseWeight};
use crate::{Error, Result, Tensor};
use calib::{Activations, InputStats, StatsRequest};

/// How weights are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// |W|.
    Magnitude,
    /// |W|·‖X_j‖.
    Wanda,
    /// SparseGPT (OBS updates of the kept weights).
    SparseGpt,
    /// Relative importance and activations.
    Ria,
}

impl Method {
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::SparseGpt => "sparsegpt",
            Method::Ria => "ria",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "magnitude" => Ok(Method::Magnitude),
            "wanda" => Ok(Method::Wanda),
            "sparsegpt" => Ok(Method::SparseGpt),
            "ria" => Ok(Method::Ria),
            other => {
                Err(Error::invalid(format!("unknown pruning method '{other}' (magnitude, wanda, sparsegpt, ria)")))
            }
        }
    }
}

/// Everything [`prune_model`] needs besides the model and the calibration samples.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Scoring method.
    pub method: Method,
    /// Unstructured target sparsity or N:M.
    pub pattern: Pattern,
    /// Layer-wise allocation (unstructured only).
    pub allocation: Allocation,
    /// DSnoT on top of the mask (not with SparseGPT).
    pub dsnot: Option<DsnotOptions>,
    /// SparseGPT hyper-parameters.
    pub sparsegpt: SparseGptOptions,
    /// RIA's activation exponent a.
    pub ria_alpha: f64,
    /// Calibration samples per forward chunk (memory vs speed).
    pub chunk: usize,
}

impl PruneOptions {
    /// Defaults for a method and pattern: uniform allocation, no DSnoT, reference
    /// hyper-parameters.
    pub fn new(method: Method, pattern: Pattern) -> Self {
        PruneOptions {
            method,
            pattern,
            allocation: Allocation::Uniform,
            dsnot: None,
            sparsegpt: SparseGptOptions::default(),
            ria_alpha: 0.5,
            chunk: 4,
        }
    }
}

/// One pruned linear.
#[derive(Clone, Debug, Serialize)]
pub struct LinearReport {
    /// "q_proj", ...
    pub name: &'static str,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Fraction of zeros after pruning.
    pub sparsity: f64,
    /// DSnoT swaps (0 without DSnoT).
    pub dsnot_swaps: usize,
}

/// One pruned decoder layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Layer index.
    pub layer: usize,
    /// Requested sparsity of this layer.
    pub target: f64,
    /// Achieved sparsity over its seven linears.
    pub achieved: f64,
    /// Per linear.
    pub linears: Vec<LinearReport>,
    /// Seconds for this layer (calibration included).
    pub seconds: f64,
}

/// Bytes of the pruned linears in N:M-compressed and dense form.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct NmStorage {
    /// Values + indices.
    pub compressed_bytes: usize,
    /// Dense.
    pub dense_bytes: usize,
}

/// The result of [`prune_model`].
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    /// Method name.
    pub method: &'static str,
    /// Pattern, e.g. "50% unstructured" or "2:4".
    pub pattern: String,
    /// Allocation name.
    pub allocation: &'static str,
    /// DSnoT applied.
    pub dsnot: bool,
    /// Per layer.
    pub layers: Vec<LayerReport>,
    /// Zeros over all pruned linears.
    pub overall_sparsity: f64,
    /// OWL's per-layer outlier ratios (percent), when OWL allocated.
    pub owl_outlier_ratios: Option<Vec<f64>>,
    /// For N:M: bytes of the pruned linears stored N:M-compressed (values + packed
    /// in-group indices, in the model dtype) and dense, after checking every compressed
    /// matrix decompresses bit-exactly.
    pub nm_storage: Option<NmStorage>,
    /// Calibration samples and their length.
    pub calibration_samples: usize,
    /// Tokens per calibration sample.
    pub calibration_seq_len: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Checks `opts` against a model config without loading weights: the pattern against every
/// linear's row length, allocation vs pattern, DSnoT vs method, explicit list length.
pub fn check_config(config: &LlamaConfig, opts: &PruneOptions) -> Result<()> {
    for p in Proj::ALL {
        opts.pattern.check(p.shape(config)[1])?;
    }
    if let Allocation::Explicit(list) = &opts.allocation {
        allocation::explicit(list, config.num_hidden_layers)?;
    }
    if matches!(opts.pattern, Pattern::NM { .. }) && opts.allocation != Allocation::Uniform {
        return Err(Error::invalid("layer-wise allocation applies to unstructured sparsity, not N:M"));
    }
    if opts.dsnot.is_some() && opts.method == Method::SparseGpt {
        return Err(Error::invalid(
            "DSnoT on top of SparseGPT is not supported: SparseGPT zeroes and rewrites the weights it prunes, \
             so there is nothing to regrow (the reference implementation does not support it either)",
        ));
    }
    Ok(())
}

/// Whether `opts` needs calibration samples.
pub fn needs_calibration(opts: &PruneOptions) -> bool {
    opts.method != Method::Magnitude || opts.dsnot.is_some() || matches!(opts.allocation, Allocation::Owl { .. })
}

fn check_options(config: &LlamaConfig, samples: &[Vec<u32>], opts: &PruneOptions) -> Result<()> {
    check_config(config, opts)?;
    let needs_samples =
        opts.method != Method::Magnitude || opts.dsnot.is_some() || matches!(opts.allocation, Allocation::Owl { .. });
    if needs_samples {
        if samples.is_empty() {
            return Err(Error::invalid("this pruning configuration needs calibration samples"));
        }
        let vocab = config.vocab_size as u32;
        if let Some(bad) = samples.iter().flatten().find(|&&t| t >= vocab) {
            return Err(Error::invalid(format!("calibration token {bad} is outside the vocabulary ({vocab})")));
        }
    }
    Ok(())
}

/// The (merged) weight of `p` in `layer` as host f32.
fn weight_f32(layer: &DecoderLayer, p: Proj) -> Result<Vec<f32>> {
    layer.linear(p).merged()?.to_f32_vec()
}

/// Per-layer target sparsities; OWL runs its dense pass over the calibration samples
/// (`embedded`: the samples' embeddings).
fn layer_targets(
    config: &LlamaConfig,
    store: &mut dyn LayerStore,
    embedded: Option<&Activations>,
    opts: &PruneOptions,
) -> Result<(Vec<f64>, Option<Vec<f64>>)> {
    let layers = config.num_hidden_layers;
    let s = opts.pattern.sparsity();
    Ok(match &opts.allocation {
        Allocation::Uniform => (allocation::uniform(s, layers), None),
        Allocation::Atp { beta } => (allocation::atp(s, *beta, layers)?, None),
        Allocation::Explicit(list) => (allocation::explicit(list, layers)?, None),
        Allocation::Owl { m, lambda } => {
            let mut acts = embedded.cloned().ok_or_else(|| Error::invalid("OWL needs calibration samples"))?;
            let mut ratios = Vec::with_capacity(layers);
            for l in 0..layers {
                let layer = store.layer(l)?;
                let stats = acts.observe(&layer, config, StatsRequest::default())?;
                let mut all = Vec::new();
                for p in Proj::ALL {
                    let st = stats[&p.input()].to_host()?;
                    let cols = st.dim();
                    all.push(scores::wanda(&weight_f32(&layer, p)?, cols, &st.scaler_row()));
                }
                ratios.push(allocation::owl_outlier_ratio(&all.iter().map(Vec::as_slice).collect::<Vec<_>>(), *m));
                acts.advance(&layer, config)?;
            }
            (allocation::owl(&ratios, s, *lambda), Some(ratios))
        }
    })
}

/// Prunes one linear's weight on the host (f32, [rows, cols]): new values and mask.
/// SparseGPT takes its Hessian as `hessian` (consumed); the others read `stats`.
fn prune_host(
    w: Vec<f32>,
    rows: usize,
    cols: usize,
    stats: Option<&InputStats>,
    hessian: Option<Vec<f64>>,
    pattern: Pattern,
    opts: &PruneOptions,
) -> Result<(Vec<f32>, BitMask)> {
    let need = || stats.ok_or_else(|| Error::invalid("missing calibration statistics"));
    match opts.method {
        Method::SparseGpt => {
            let h = hessian.ok_or_else(|| Error::invalid("missing calibration statistics"))?;
            let mut w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let mask = sparsegpt::prune(&mut w64, h, rows, cols, pattern, opts.sparsegpt)?;
            Ok((w64.into_iter().map(|v| v as f32).collect(), mask))
        }
        method => {
            let score = match method {
                Method::Magnitude => scores::magnitude(&w),
                Method::Wanda => {
                    let st = need()?;
                    scores::wanda(&w, cols, &st.scaler_row())
                }
                _ => {
                    let st = need()?;
                    scores::ria(&w, rows, cols, &st.scaler_row(), opts.ria_alpha)
                }
            };
            let mask = select::select(&score, rows, cols, pattern)?;
            Ok((w, mask))
        }
    }
}

/// Prunes one linear's weight on its CUDA device with the GPU kernels: the new weight
/// (same dtype) and the mask. Masking methods return the mask only (`None` weight):
/// the caller applies it after the optional DSnoT.
fn prune_cuda(
    dev: &crate::device::CudaDevice,
    weight: &Tensor,
    stats: Option<&calib::Stats>,
    pattern: Pattern,
    opts: &PruneOptions,
) -> Result<(Option<Tensor>, BitMask)> {
    use crate::ops::{cast, prune_select};
    let [rows, cols] = weight.shape().dims_n::<2>("prune")?;
    let cuda_stats = || match stats {
        Some(calib::Stats::Cuda(s)) => Ok(s),
        _ => Err(Error::invalid("missing device calibration statistics")),
    };
    if opts.method == Method::SparseGpt {
        let st = cuda_stats()?;
        let xtx = st.xtx().ok_or_else(|| Error::invalid("calibration collected no XᵀX"))?;
        // H = (2/n)·XᵀX on a copy: q, k and v share their input's statistics.
        let mut h = dev.alloc::<f64>(cols * cols)?;
        dev.stream().memcpy_dtod(xtx, h.slice_mut())?;
        cast::cuda::scale_f64(dev, h.slice_mut(), 2.0 / st.tokens().max(1) as f64, cols * cols)?;
        let mut w64 = cast::cuda::to_f64(dev, weight)?;
        let mask = sparsegpt::prune_cuda(dev, w64.slice_mut(), h.slice(), rows, cols, pattern, opts.sparsegpt)?;
        let new = cast::cuda::from_f64(dev, w64.slice(), weight.shape().clone(), weight.dtype(), weight.device())?;
        return Ok((Some(new), mask));
    }
    let scores = match opts.method {
        Method::Magnitude => prune_select::magnitude_scores(weight)?,
        Method::Wanda => prune_select::wanda_scores(weight, cuda_stats()?.scaler_row()?.slice())?,
        _ => prune_select::ria_scores(weight, cuda_stats()?.scaler_row()?.slice(), opts.ria_alpha)?,
    };
    pattern.check(cols)?;
    let mask = match pattern {
        Pattern::Unstructured(s) => prune_select::select_rows_lowest(&scores, scores::pruned_count(cols, s))?,
        Pattern::NM { n, m } => prune_select::select_nm(&scores, n, m)?,
    };
    Ok((None, BitMask::from_bytes(rows, cols, mask.to_vec::<u8>()?)?))
}

/// A linear's input statistics: shared with projections still to be pruned, or its own
/// (the last one to read that input), whose buffers pruning may take over.
enum StatsIn<'a> {
    Shared(&'a calib::Stats),
    Own(calib::Stats),
}

impl<'a> StatsIn<'a> {
    fn get(&self) -> &calib::Stats {
        match self {
            StatsIn::Shared(s) => s,
            StatsIn::Own(s) => s,
        }
    }

    /// The host statistics, borrowed when they are shared host ones.
    fn into_host(self) -> Result<std::borrow::Cow<'a, InputStats>> {
        Ok(match self {
            StatsIn::Shared(s) => s.to_host()?,
            StatsIn::Own(s) => std::borrow::Cow::Owned(s.into_host()?),
        })
    }
}

/// Prunes the weight of one linear (on its device) and applies DSnoT when asked: the new
/// weight (same dtype and device, exact zeros where pruned), its mask, DSnoT swaps.
fn prune_linear(
    weight: &Tensor,
    stats: Option<StatsIn<'_>>,
    pattern: Pattern,
    dsnot: Option<DsnotOptions>,
    opts: &PruneOptions,
) -> Result<(Tensor, BitMask, usize)> {
    let [rows, cols] = weight.shape().dims_n::<2>("prune")?;
    let refine = |w: &[f32], st: Option<&InputStats>, mask: &mut BitMask| -> Result<usize> {
        match (dsnot, st) {
            (Some(d), Some(st)) => dsnot::refine(w, rows, cols, st, mask, pattern, d),
            _ => Ok(0),
        }
    };
    match weight.device() {
        crate::Device::Cpu(_) => {
            let mut host = stats.map(StatsIn::into_host).transpose()?;
            // SparseGPT's H: scaled in place when this linear owns its statistics.
            let hessian = match (opts.method, host.take()) {
                (Method::SparseGpt, Some(std::borrow::Cow::Owned(s))) => Some(s.into_hessian()?),
                (Method::SparseGpt, Some(std::borrow::Cow::Borrowed(s))) => Some(s.hessian()?),
                (_, st) => {
                    host = st;
                    None
                }
            };
            let (mut w, mut mask) =
                prune_host(weight.to_f32_vec()?, rows, cols, host.as_deref(), hessian, pattern, opts)?;
            let swaps = refine(&w, host.as_deref(), &mut mask)?;
            mask.apply(&mut w)?;
            Ok((Tensor::from_f32(w, weight.shape().clone(), weight.dtype(), weight.device())?, mask, swaps))
        }
        crate::Device::Cuda(dev) => {
            let (new, mut mask) = prune_cuda(dev, weight, stats.as_ref().map(StatsIn::get), pattern, opts)?;
            if let Some(new) = new {
                return Ok((new, mask, 0));
            }
            let host = match (dsnot, stats) {
                (Some(_), Some(st)) => Some(st.into_host()?),
                _ => None,
            };
            let swaps = if dsnot.is_some() { refine(&weight.to_f32_vec()?, host.as_deref(), &mut mask)? } else { 0 };
            let mask_t = Tensor::from_vec(mask.bytes().to_vec(), [rows, BitMask::stride_for(cols)], weight.device())?;
            Ok((crate::ops::prune_select::apply_mask(weight, &mask_t)?, mask, swaps))
        }
    }
}

/// The pruned form of a linear whose weight (merged, for a compressed one) was pruned to
/// `pruned` with `mask`, and its final mask. A dense linear becomes the pruned weight. A
/// compressed one keeps its layout under the new mask intersected with its old one (what
/// was pruned stays pruned): a masked-LoRA linear keeps its base values there and its
/// adapters, now masked by it (LoSA's unmerge; SparseGPT's updates of kept weights could
/// not be kept, so it is refused); a trained sparse weight takes the pruned values.
fn remask(old: Linear, pruned: Tensor, mask: BitMask, method: Method) -> Result<(Linear, BitMask)> {
    let Some(w) = old.compressed() else { return Ok((Linear::new(pruned), mask)) };
    let format = w.format();
    if format != crate::sparse::SparseFormat::Bitmask {
        return Err(Error::invalid("re-pruning an N:M compressed linear is not supported"));
    }
    let mask = mask.and(&w.mask()?)?;
    let linear = match old {
        Linear::MaskedLora(mut l) => {
            if method == Method::SparseGpt {
                return Err(Error::invalid(
                    "SparseGPT updates the kept weights: a masked-LoRA linear can only be re-masked (use Wanda, magnitude or RIA)",
                ));
            }
            l.base = SparseWeight::compress(&l.base.to_dense()?, &mask, format)?;
            Linear::MaskedLora(l)
        }
        _ => Linear::Sparse(SparseWeight::compress(&pruned, &mask, format)?),
    };
    Ok((linear, mask))
}

/// Compresses a pruned weight to N:M (on its device), checks the round trip is bit-exact,
/// and returns (compressed, dense) bytes.
fn nm_round_trip(weight: &Tensor, mask: &BitMask, n: usize, m: usize) -> Result<(usize, usize)> {
    fn host<T: Copy + Default + PartialEq>(v: Vec<T>, mask: &BitMask, n: usize, m: usize) -> Result<(usize, usize)> {
        let c = crate::sparse::NmMatrix::compress(&v, mask, n, m)?;
        if c.decompress() != v {
            return Err(Error::invalid("N:M compression did not round-trip"));
        }
        Ok((c.bytes(), c.dense_bytes()))
    }
    let (rows, cols) = (mask.rows(), mask.cols());
    match weight.device() {
        crate::Device::Cpu(_) => match weight.dtype() {
            crate::DType::BF16 => host(weight.to_vec::<half::bf16>()?, mask, n, m),
            _ => host(weight.to_f32_vec()?, mask, n, m),
        },
        crate::Device::Cuda(_) => {
            let mask_t = Tensor::from_vec(mask.bytes().to_vec(), [rows, BitMask::stride_for(cols)], weight.device())?;
            let (values, indices) = crate::ops::nm_pack::compress(weight, &mask_t, n, m)?;
            let back = crate::ops::nm_pack::decompress(&values, &indices, rows, cols, n, m)?;
            let same = match weight.dtype() {
                crate::DType::BF16 => back.to_vec::<half::bf16>()? == weight.to_vec::<half::bf16>()?,
                _ => back.to_f32_vec()?.iter().zip(weight.to_f32_vec()?).all(|(a, b)| a.to_bits() == b.to_bits()),
            };
            if !same {
                return Err(Error::invalid("N:M compression did not round-trip on the device"));
            }
            Ok((values.size_in_bytes() + indices.size_in_bytes(), weight.size_in_bytes()))
        }
    }
}

/// Where [`prune_layers`] reads the decoder layers and puts the pruned ones.
pub trait LayerStore {
    /// Decoder layer `l` as it is now (OWL reads every layer once before pruning, then
    /// pruning reads each once more).
    fn layer(&mut self, l: usize) -> Result<DecoderLayer>;
    /// The pruned layer `l` (called once per layer, in order).
    fn put(&mut self, l: usize, layer: DecoderLayer) -> Result<()>;
}

/// The layers of a model in memory.
struct InMemory<'a>(&'a mut Llama);

impl LayerStore for InMemory<'_> {
    fn layer(&mut self, l: usize) -> Result<DecoderLayer> {
        self.0.layers.get(l).cloned().ok_or_else(|| Error::invalid(format!("no decoder layer {l}")))
    }
    fn put(&mut self, l: usize, layer: DecoderLayer) -> Result<()> {
        self.0.layers[l] = layer;
        Ok(())
    }
}

/// Prunes every decoder linear of `model` in place (weights keep their dtype and device;
/// pruned entries become exact zeros). Compressed linears are re-masked from their merged
/// weights and stay compressed (see `remask`; LoSA's stages use this). `samples` are calibration windows of one length;
/// `progress` is called after each layer.
pub fn prune_model(
    model: &mut Llama,
    samples: &[Vec<u32>],
    opts: &PruneOptions,
    progress: &mut dyn FnMut(&LayerReport),
) -> Result<PruneReport> {
    let (config, embed) = (model.config.clone(), model.embed.clone());
    prune_layers(&config, &embed, &mut InMemory(model), samples, opts, progress)
}

/// [`prune_model`] over any [`LayerStore`]: `embed` [vocab, dim] embeds the calibration
/// samples (on the device and in the dtype the layers compute in).
pub fn prune_layers(
    cfg: &LlamaConfig,
    embed: &Tensor,
    store: &mut dyn LayerStore,
    samples: &[Vec<u32>],
    opts: &PruneOptions,
    progress: &mut dyn FnMut(&LayerReport),
) -> Result<PruneReport> {
    check_options(cfg, samples, opts)?;
    let start = Instant::now();
    let needs_stats = needs_calibration(opts);
    let embedded = if needs_stats { Some(Activations::embed(embed, samples, opts.chunk)?) } else { None };
    let (targets, owl_ratios) = layer_targets(cfg, store, embedded.as_ref(), opts)?;
    let mut acts = if opts.method != Method::Magnitude || opts.dsnot.is_some() { embedded } else { None };
    let req = StatsRequest { xtx: opts.method == Method::SparseGpt };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    let (mut zeros, mut total) = (0usize, 0usize);
    let mut nm_storage = matches!(opts.pattern, Pattern::NM { .. }).then(NmStorage::default);
    if targets.len() != cfg.num_hidden_layers {
        return Err(Error::invalid(format!("{} layer targets for {} layers", targets.len(), cfg.num_hidden_layers)));
    }
    for (l, &target) in targets.iter().enumerate() {
        let t0 = Instant::now();
        let mut layer = store.layer(l)?;
        let mut stats = match &acts {
            Some(a) => Some(a.observe(&layer, cfg, req)?),
            None => None,
        };
        let pattern = match opts.pattern {
            Pattern::Unstructured(_) => Pattern::Unstructured(target),
            nm => nm,
        };
        let mut linears = Vec::with_capacity(7);
        for p in Proj::ALL {
            let [rows, cols] = p.shape(cfg);
            // The last projection that reads an input takes its statistics over (SparseGPT
            // scales XᵀX in place); the others share them.
            let last_reader = p.input().projections().last() == Some(&p);
            let own = if last_reader { stats.as_mut().and_then(|s| s.remove(&p.input())) } else { None };
            let st = match own {
                Some(s) => Some(StatsIn::Own(s)),
                None => match stats.as_ref() {
                    Some(s) => Some(StatsIn::Shared(
                        s.get(&p.input()).ok_or_else(|| Error::invalid("calibration statistics missing"))?,
                    )),
                    None => None,
                },
            };
            let dsnot = opts.dsnot.filter(|d| d.include_mlp || matches!(p, Proj::Q | Proj::K | Proj::V | Proj::O));
            let old = layer.linear(p).clone();
            let (new, mask, swaps) = prune_linear(&old.merged()?, st, pattern, dsnot, opts)?;
            if let (Some(st), Pattern::NM { n, m }) = (nm_storage.as_mut(), pattern) {
                let (c, d) = nm_round_trip(&new, &mask, n, m)?;
                st.compressed_bytes += c;
                st.dense_bytes += d;
            }
            let (linear, mask) = remask(old, new, mask, opts.method)?;
            *layer.linear_mut(p) = linear;
            zeros += rows * cols - mask.kept();
            total += rows * cols;
            linears.push(LinearReport { name: p.short(), rows, cols, sparsity: mask.sparsity(), dsnot_swaps: swaps });
        }
        drop(stats);
        if let Some(a) = acts.as_mut() {
            if l + 1 < cfg.num_hidden_layers {
                a.advance(&layer, cfg)?;
            }
        }
        store.put(l, layer)?;
        let numel: usize = linears.iter().map(|r| r.rows * r.cols).sum();
        let achieved = linears.iter().map(|r| r.sparsity * (r.rows * r.cols) as f64).sum::<f64>() / numel as f64;
        let report = LayerReport { layer: l, target, achieved, linears, seconds: t0.elapsed().as_secs_f64() };
        progress(&report);
        layers.push(report);
    }
    Ok(PruneReport {
        method: opts.method.name(),
        pattern: opts.pattern.to_string(),
        allocation: opts.allocation.name(),
        dsnot: opts.dsnot.is_some(),
        layers,
        overall_sparsity: zeros as f64 / total.max(1) as f64,
        owl_outlier_ratios: owl_ratios,
        nm_storage,
        calibration_samples: samples.len(),
        calibration_seq_len: samples.first().map_or(0, Vec::len),
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::llama::LlamaConfig;
    use crate::{DType, Device};

    fn tiny() -> (Llama, Vec<Vec<u32>>) {
        let mut cfg = LlamaConfig::tiny();
        cfg.hidden_size = 32;
        cfg.intermediate_size = 48;
        cfg.num_hidden_layers = 3;
        let m = Llama::random(&cfg, DType::F32, &Device::cpu(), 1).unwrap();
        let samples = (0..5).map(|s| (0..16).map(|t| ((s * 31 + t * 7) % cfg.vocab_size) as u32).collect()).collect();
        (m, samples)
    }

    /// Masked-LoRA and trained sparse linears are re-masked from their merged weights and
    /// stay compressed: the new mask is inside the old one, a masked-LoRA base keeps its
    /// values there and its adapters; SparseGPT (which rewrites kept weights) is refused.
    #[test]
    fn compressed_linears_are_re_masked_not_densified() {
        use crate::finetune::{attach_masked_lora, seft, LoraOptions};
        let (mut m, samples) = tiny();
        prune_model(&mut m, &samples, &PruneOptions::new(Method::Wanda, Pattern::Unstructured(0.3)), &mut |_| {})
            .unwrap();
        let mut lora = LoraOptions::new(3, 6.0);
        lora.b_std = 0.1;
        let lm = attach_masked_lora(&m, lora).unwrap();
        let wanda = PruneOptions::new(Method::Wanda, Pattern::Unstructured(0.5));
        let mut re = lm.clone();
        prune_model(&mut re, &samples, &wanda, &mut |_| {}).unwrap();
        for (before, after) in lm.layers.iter().zip(&re.layers) {
            for p in Proj::ALL {
                let (Linear::MaskedLora(x), Linear::MaskedLora(y)) = (before.linear(p), after.linear(p)) else {
                    panic!("{p:?} is no longer a masked-LoRA linear");
                };
                let (old, new) = (x.base.mask().unwrap(), y.base.mask().unwrap());
                let (w0, w1) = (
                    x.base.to_dense().unwrap().to_f32_vec().unwrap(),
                    y.base.to_dense().unwrap().to_f32_vec().unwrap(),
                );
                let cols = old.cols();
                for r in 0..old.rows() {
                    // Wanda's quota per row, or the zeros the row already had.
                    let quota = (cols as f64 * 0.5).floor() as usize;
                    assert_eq!(cols - new.kept_in_row(r), quota.max(cols - old.kept_in_row(r)), "{p:?} row {r}");
                    for c in 0..cols {
                        assert!(old.get(r, c) || !new.get(r, c), "{p:?} ({r}, {c}) came back");
                        let want = if new.get(r, c) { w0[r * cols + c] } else { 0.0 };
                        assert_eq!(w1[r * cols + c], want, "{p:?} ({r}, {c})");
                    }
                }
                assert_eq!(
                    (x.a.to_f32_vec().unwrap(), x.b.to_f32_vec().unwrap()),
                    (y.a.to_f32_vec().unwrap(), y.b.to_f32_vec().unwrap())
                );
            }
        }
        let mut sg = lm.clone();
        let e = prune_model(
            &mut sg,
            &samples,
            &PruneOptions::new(Method::SparseGpt, Pattern::Unstructured(0.5)),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("SparseGPT"), "{e}");
        // A trained sparse weight takes the pruned values and stays compressed.
        let mut sp = seft::attach(&m, crate::sparse::SparseFormat::Bitmask).unwrap();
        prune_model(&mut sp, &samples, &wanda, &mut |_| {}).unwrap();
        for (layer, dense) in sp.layers.iter().zip(&m.layers) {
            for p in Proj::ALL {
                let Linear::Sparse(w) = layer.linear(p) else { panic!("{p:?} was densified") };
                let (got, before) = (
                    w.to_dense().unwrap().to_f32_vec().unwrap(),
                    dense.linear(p).dense().unwrap().to_f32_vec().unwrap(),
                );
                assert!(got.iter().zip(&before).all(|(g, b)| *g == 0.0 || g == b));
                assert!((w.mask().unwrap().sparsity() - 0.5).abs() < 0.05);
            }
        }
    }

    #[test]
    fn every_method_reaches_its_pattern_exactly() {
        for method in [Method::Magnitude, Method::Wanda, Method::SparseGpt, Method::Ria] {
            for pattern in [
                Pattern::Unstructured(0.5),
                Pattern::Unstructured(0.7),
                Pattern::NM { n: 2, m: 4 },
                Pattern::NM { n: 4, m: 8 },
            ] {
                let (mut m, samples) = tiny();
                let report = prune_model(&mut m, &samples, &PruneOptions::new(method, pattern), &mut |_| {}).unwrap();
                for (l, layer) in m.layers.iter().enumerate() {
                    for p in Proj::ALL {
                        let [rows, cols] = p.shape(&m.config);
                        let w = layer.linear(p).dense().unwrap().to_f32_vec().unwrap();
                        let mask = BitMask::from_nonzero(&w, rows, cols).unwrap();
                        match pattern {
                            Pattern::Unstructured(s) if method != Method::SparseGpt => {
                                let pruned = (cols as f64 * s).floor() as usize;
                                for r in 0..rows {
                                    assert_eq!(
                                        cols - mask.kept_in_row(r),
                                        pruned,
                                        "{method:?} {pattern} layer {l} {p:?} row {r}"
                                    );
                                }
                            }
                            Pattern::Unstructured(s) => {
                                // SparseGPT: exact per block of 128 columns (here one block).
                                assert_eq!(rows * cols - mask.kept(), ((rows * cols) as f64 * s).floor() as usize);
                            }
                            Pattern::NM { n, m: gm } => {
                                for r in 0..rows {
                                    for g in (0..cols).step_by(gm) {
                                        assert_eq!(
                                            (g..g + gm).filter(|&c| mask.get(r, c)).count(),
                                            n,
                                            "{method:?} {pattern}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
                assert!((report.overall_sparsity - pattern.sparsity()).abs() < 0.02, "{:?}", report.overall_sparsity);
                if let Pattern::NM { n, m: gm } = pattern {
                    // f32 values: N/M of the dense bytes plus ceil(log2 M) bits per kept value.
                    let st = report.nm_storage.unwrap();
                    let bits = crate::sparse::nm::index_bits(gm);
                    let rows_total: usize =
                        Proj::ALL.iter().map(|p| p.shape(&m.config)[0]).sum::<usize>() * m.config.num_hidden_layers;
                    let kept: usize = st.dense_bytes / 4 / gm * n;
                    assert!(st.compressed_bytes >= kept * 4 + kept * bits / 8);
                    assert!(st.compressed_bytes <= kept * 4 + kept * bits / 8 + rows_total);
                }
            }
        }
    }

    #[test]
    fn allocations_and_dsnot_keep_the_mean_and_per_row_counts() {
        for alloc in [Allocation::owl(), Allocation::Atp { beta: 0.05 }, Allocation::Explicit(vec![0.4, 0.5, 0.6])] {
            let (mut m, samples) = tiny();
            let mut opts = PruneOptions::new(Method::Wanda, Pattern::Unstructured(0.5));
            opts.allocation = alloc.clone();
            opts.dsnot = Some(DsnotOptions { include_mlp: true, ..Default::default() });
            let r = prune_model(&mut m, &samples, &opts, &mut |_| {}).unwrap();
            let mean = allocation::mean(&r.layers.iter().map(|l| l.target).collect::<Vec<_>>());
            assert!((mean - 0.5).abs() < 1e-12, "{alloc:?}: mean target {mean}");
            for (l, layer) in m.layers.iter().enumerate() {
                let (rows, cols) = layer.q.dims();
                let w = layer.q.dense().unwrap().to_f32_vec().unwrap();
                let mask = BitMask::from_nonzero(&w, rows, cols).unwrap();
                let pruned = (cols as f64 * r.layers[l].target).floor() as usize;
                assert!((0..rows).all(|row| cols - mask.kept_in_row(row) == pruned), "{alloc:?} layer {l}");
            }
        }
    }

    #[test]
    fn bad_options_are_errors() {
        let (mut m, samples) = tiny();
        let e =
            |opts: PruneOptions, m: &mut Llama| prune_model(m, &samples, &opts, &mut |_| {}).unwrap_err().to_string();
        assert!(e(PruneOptions::new(Method::Wanda, Pattern::Unstructured(1.0)), &mut m).contains("[0, 1)"));
        assert!(e(PruneOptions::new(Method::Wanda, Pattern::NM { n: 4, m: 4 }), &mut m).contains("N < M"));
        assert!(e(PruneOptions::new(Method::Wanda, Pattern::NM { n: 2, m: 5 }), &mut m).contains("multiple of 5"));
        let mut o = PruneOptions::new(Method::SparseGpt, Pattern::Unstructured(0.5));
        o.dsnot = Some(DsnotOptions::default());
        assert!(e(o, &mut m).contains("DSnoT"));
        let mut o = PruneOptions::new(Method::Wanda, Pattern::NM { n: 2, m: 4 });
        o.allocation = Allocation::owl();
        assert!(e(o, &mut m).contains("allocation"));
        let r = prune_model(&mut m, &[], &PruneOptions::new(Method::Wanda, Pattern::Unstructured(0.5)), &mut |_| {});
        assert!(r.unwrap_err().to_string().contains("calibration"));
    }
}
