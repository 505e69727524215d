//! Adapter-only export and merge: the trained A, B of every masked-LoRA linear under PEFT's
//! names (`base_model.model.<module>.lora_A.weight` [r, in], `....lora_B.weight` [out, r]),
//! plus the bit-packed mask each adapter is merged under (`base_model.model.<module>.sparse_mask`,
//! U8 [out, ceil(in/8)], bit j%8 of byte j/8) and the scale in the metadata
//! (`sparsetune.adapter`: peft_type, r, lora_alpha, scale, target_modules). Merging later:
//! `W ← W⊙M + s·M⊙(B·A)` ([`merge_adapter_file`]), zeros exactly where M is 0.

use std::path::Path;

use super::adapters::module_name;
use crate::io::outputs::{new_write_id, role, write_stamp};
use crate::io::{write_owned, OwnedEntry, SafetensorsFile};
use crate::model::llama::{Llama, Proj};
use crate::nn::{Linear, MaskedLora};
use crate::ops::masked_lora::AdapterGrad;
use crate::sparse::{BitMask, SparseFormat, SparseWeight};
use crate::{DType, Error, Result, Tensor};

const META: &str = "sparsetune.adapter";
const PREFIX: &str = "base_model.model.";

/// Writes the adapters of `model` (every masked-LoRA linear) to `path` in `dtype`, with a
/// write id (written by [`role::ADAPTERS`]).
pub fn save_adapters(model: &Llama, path: &Path, dtype: DType) -> Result<()> {
    let mut blobs = Vec::new();
    let (mut scale, mut ranks) = (None, Vec::new());
    for (l, layer) in model.layers.iter().enumerate() {
        for p in Proj::ALL {
            let Linear::MaskedLora(m) = layer.linear(p) else { continue };
            let module = format!("{PREFIX}{}", module_name(l, p));
            blobs.push(OwnedEntry::converted(format!("{module}.lora_A.weight"), &m.a, dtype)?);
            blobs.push(OwnedEntry::converted(format!("{module}.lora_B.weight"), &m.b, dtype)?);
            let mask = m.base.mask()?;
            blobs.push(OwnedEntry {
                name: format!("{module}.sparse_mask"),
                dtype: DType::U8,
                shape: vec![mask.rows(), BitMask::stride_for(mask.cols())],
                data: mask.bytes().to_vec(),
            });
            if scale.is_some_and(|s| s != m.scale) {
                return Err(Error::invalid("adapters with different scales cannot share one adapter file"));
            }
            scale = Some(m.scale);
            ranks.push(m.a.dims()[0]);
        }
    }
    let Some(scale) = scale else { return Err(Error::invalid("the model has no adapters to export")) };
    let r = ranks.iter().copied().max().unwrap_or(0);
    let info = serde_json::json!({
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": scale * r as f32,
        "scale": scale,
        "ranks": ranks,
        "target_modules": Proj::ALL.iter().map(|p| p.short()).collect::<Vec<_>>(),
    });
    let mut md = write_stamp(&new_write_id(), role::ADAPTERS);
    md.insert(META.to_string(), info.to_string());
    md.insert("format".to_string(), "pt".to_string());
    write_owned(path, &blobs, &md)
}

/// `base` (dense) with the adapters of the file at `path` merged in under their masks.
pub fn merge_adapter_file(base: &Llama, path: &Path) -> Result<Llama> {
    let st = SafetensorsFile::open(path)?;
    let info: serde_json::Value = st
        .metadata()
        .get(META)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::format(path, "adapter", "no sparsetune.adapter metadata"))?;
    let scale = info["scale"].as_f64().ok_or_else(|| Error::format(path, "adapter", "no scale"))? as f32;
    let (device, dtype) = (base.device().clone(), base.dtype());
    let mut out = base.clone();
    let mut merged = 0;
    for (l, layer) in out.layers.iter_mut().enumerate() {
        for p in Proj::ALL {
            let module = format!("{PREFIX}{}", module_name(l, p));
            let a_name = format!("{module}.lora_A.weight");
            if st.info(&a_name).is_none() {
                continue;
            }
            let w = layer.linear(p).dense()?;
            let (rows, cols) = layer.linear(p).dims();
            let load = |name: &str| -> Result<Tensor> {
                let (_, shape) = st
                    .info(name)
                    .ok_or_else(|| Error::MissingTensor { path: path.to_path_buf(), name: name.into() })?;
                Tensor::from_f32(st.tensor_f32(name)?, shape, dtype, &device)
            };
            let (a, b) = (load(&a_name)?, load(&format!("{module}.lora_B.weight"))?);
            let r = a.dims()[0];
            if a.dims() != [r, cols] || b.dims() != [rows, r] {
                return Err(Error::format(
                    path,
                    "adapter",
                    format!("{module}: A {} and B {} for a {rows}x{cols} weight", a.shape(), b.shape()),
                ));
            }
            let mask = BitMask::from_bytes(rows, cols, st.tensor_bytes(&format!("{module}.sparse_mask"))?.to_vec())?;
            let lin = MaskedLora {
                base: SparseWeight::compress(w, &mask, SparseFormat::Bitmask)?,
                a,
                b,
                scale,
                grad: AdapterGrad::Exact,
            };
            *layer.linear_mut(p) = Linear::new(Linear::MaskedLora(lin).merged()?);
            merged += 1;
        }
    }
    if merged == 0 {
        return Err(Error::format(path, "adapter", "no adapter matches the model's layers"));
    }
    Ok(out)
}
