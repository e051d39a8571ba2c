//! The cache of quantized layers: after xbench converts a model's encoder products to a precision
//! (int8 and int4 calibrate, and int4 runs GPTQ: seconds for a large model), it can write the
//! packed arrays to a GGUF file beside the checkpoint, `xbench-<precision>.gguf`, and the next load
//! reads them instead of computing them. The file records what it was made from (the weight files'
//! names, sizes and modification times, the precision, xbench's quantization version); a file that
//! does not match is ignored and rewritten, never trusted.

use std::path::PathBuf;

use xbench_kernels::half::HalfKind;
use xbench_kernels::matmul::Stored;

use super::fused::FusedBert;
use super::gguf::{Gguf, Tensor};
use super::{ModelFiles, Precision};

/// Bumped whenever a precision's arrays or how they are computed change: older files are stale.
const FORMAT: &str = "xbench quantized layers 2";
const PRODUCTS: [&str; 4] = ["qkv", "attention_output", "intermediate", "output"];

/// Where the cache of `precision` for `files` lives: beside `config.json`.
pub fn path(files: &ModelFiles, precision: Precision) -> Option<PathBuf> {
    let dir = files.config.parent()?;
    Some(dir.join(format!("xbench-{}.gguf", precision.name())))
}

/// What the arrays were computed from.
fn source(files: &ModelFiles) -> Result<String, String> {
    let mut parts = Vec::new();
    for w in &files.weights {
        let meta = std::fs::metadata(w).map_err(|e| format!("{}: {e}", w.display()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let name = w
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        parts.push(format!("{name}:{}:{modified}", meta.len()));
    }
    Ok(parts.join(","))
}

fn metadata(files: &ModelFiles, precision: Precision) -> Result<Vec<(String, String)>, String> {
    Ok(vec![
        ("general.architecture".into(), "xbench-cross-encoder".into()),
        ("xbench.format".into(), FORMAT.into()),
        ("xbench.precision".into(), precision.name().into()),
        ("xbench.source".into(), source(files)?),
    ])
}

/// Writes `model`'s converted products to the cache of `precision`.
pub fn save(
    files: &ModelFiles,
    precision: Precision,
    model: &FusedBert,
) -> Result<PathBuf, String> {
    let path = path(files, precision).ok_or("the model has no directory")?;
    let mut g = Gguf::default();
    g.metadata.extend(metadata(files, precision)?);
    for (l, layer) in model.layers.iter().enumerate() {
        let products = [
            &layer.qkv,
            &layer.attention_output,
            &layer.intermediate,
            &layer.output,
        ];
        for (name, product) in PRODUCTS.iter().zip(products) {
            let key = |field: &str| format!("blk.{l}.{name}.{field}");
            let stored = product
                .stored()
                .ok_or_else(|| format!("layer {l}'s {name} product is not converted"))?;
            match stored {
                Stored::Int8 {
                    packed,
                    scales,
                    col_sums,
                    smooth,
                } => {
                    g.tensors.insert(key("packed"), Tensor::I8(packed));
                    g.tensors.insert(key("scales"), Tensor::F32(scales));
                    g.tensors.insert(key("col_sums"), Tensor::I32(col_sums));
                    g.tensors.insert(key("smooth"), Tensor::F32(smooth));
                }
                Stored::Int4 {
                    packed,
                    scales,
                    offsets,
                    smooth,
                } => {
                    let bytes = packed.into_iter().map(|b| b as i8).collect();
                    g.tensors.insert(key("nibbles"), Tensor::I8(bytes));
                    g.tensors.insert(key("scales"), Tensor::F16(scales));
                    g.tensors.insert(key("offsets"), Tensor::F32(offsets));
                    g.tensors.insert(key("smooth"), Tensor::F32(smooth));
                }
                Stored::Half { kind, packed } => {
                    let t = match kind {
                        HalfKind::Bf16 => Tensor::Bf16(packed),
                        HalfKind::F16 => Tensor::F16(packed),
                    };
                    g.tensors.insert(key("packed"), t);
                }
            }
        }
    }
    g.write(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Converts `model`'s fp32 products from the cache of `precision`: `Ok(None)` when there is no
/// cache or it was made from something else (stale), an error when it is damaged.
pub fn load(
    files: &ModelFiles,
    precision: Precision,
    model: &mut FusedBert,
) -> Result<Option<PathBuf>, String> {
    let Some(path) = path(files, precision) else {
        return Ok(None);
    };
    if !path.is_file() {
        return Ok(None);
    }
    let g = Gguf::read(&path)?;
    for (key, want) in metadata(files, precision)? {
        if g.metadata.get(&key) != Some(&want) {
            return Ok(None);
        }
    }
    let mut t = Tensors { g, path: &path };
    let mut converted = Vec::with_capacity(model.layers.len());
    for (l, layer) in model.layers.iter().enumerate() {
        let products = [
            &layer.qkv,
            &layer.attention_output,
            &layer.intermediate,
            &layer.output,
        ];
        let mut four = Vec::with_capacity(4);
        for (name, product) in PRODUCTS.iter().zip(products) {
            let key = |field: &str| format!("blk.{l}.{name}.{field}");
            let stored = match precision {
                Precision::Int8 => Stored::Int8 {
                    packed: t.i8(key("packed"))?,
                    scales: t.f32(key("scales"))?,
                    col_sums: t.i32(key("col_sums"))?,
                    smooth: t.f32(key("smooth"))?,
                },
                Precision::Int4 => Stored::Int4 {
                    packed: t.i8(key("nibbles"))?.into_iter().map(|b| b as u8).collect(),
                    scales: t.f16(key("scales"))?,
                    offsets: t.f32(key("offsets"))?,
                    smooth: t.f32(key("smooth"))?,
                },
                Precision::Bf16 => Stored::Half {
                    kind: HalfKind::Bf16,
                    packed: t.bf16(key("packed"))?,
                },
                Precision::Fp16 => Stored::Half {
                    kind: HalfKind::F16,
                    packed: t.f16(key("packed"))?,
                },
                Precision::Fp32 => return Ok(None),
            };
            let layer = product
                .from_stored(stored)
                .map_err(|e| format!("{}: {}: {e}", path.display(), key("")))?;
            four.push(layer);
        }
        converted.push(four);
    }
    for (layer, four) in model.layers.iter_mut().zip(converted) {
        let [qkv, attention_output, intermediate, output]: [_; 4] = four
            .try_into()
            .map_err(|_| "four products per layer".to_string())?;
        layer.qkv = qkv;
        layer.attention_output = attention_output;
        layer.intermediate = intermediate;
        layer.output = output;
    }
    Ok(Some(path))
}

/// A cache file's tensors, taken out by name and type.
struct Tensors<'a> {
    g: Gguf,
    path: &'a std::path::Path,
}

impl Tensors<'_> {
    fn take(&mut self, key: &str) -> Result<Tensor, String> {
        self.g
            .tensors
            .remove(key)
            .ok_or_else(|| format!("{} has no tensor {key}", self.path.display()))
    }

    fn wrong(&self, key: &str) -> String {
        format!("{}: {key} has the wrong type", self.path.display())
    }

    fn f32(&mut self, key: String) -> Result<Vec<f32>, String> {
        match self.take(&key)? {
            Tensor::F32(v) => Ok(v),
            _ => Err(self.wrong(&key)),
        }
    }

    fn f16(&mut self, key: String) -> Result<Vec<u16>, String> {
        match self.take(&key)? {
            Tensor::F16(v) => Ok(v),
            _ => Err(self.wrong(&key)),
        }
    }

    fn bf16(&mut self, key: String) -> Result<Vec<u16>, String> {
        match self.take(&key)? {
            Tensor::Bf16(v) => Ok(v),
            _ => Err(self.wrong(&key)),
        }
    }

    fn i8(&mut self, key: String) -> Result<Vec<i8>, String> {
        match self.take(&key)? {
            Tensor::I8(v) => Ok(v),
            _ => Err(self.wrong(&key)),
        }
    }

    fn i32(&mut self, key: String) -> Result<Vec<i32>, String> {
        match self.take(&key)? {
            Tensor::I32(v) => Ok(v),
            _ => Err(self.wrong(&key)),
        }
    }
}
