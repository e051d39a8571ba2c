//! The cache of quantized layers: after xbench converts a model's layer products to a precision
//! (int8 and int4 calibrate, and int4 runs GPTQ: seconds for a large model, minutes for a
//! generative reranker of billions of weights), it can write the packed arrays to a GGUF file
//! beside the checkpoint, `xbench-<precision>.gguf`, and the next load reads them instead of
//! computing them. The file records what it was made from (the weight files' names, sizes and
//! modification times, the precision, xbench's quantization version, the kind of model and, for a
//! generative reranker, a fingerprint of the calibration tokens its prompt made); a file that does
//! not match is ignored and rewritten, never trusted.

use std::path::PathBuf;

use xbench_kernels::half::HalfKind;
use xbench_kernels::matmul::{Linear, Stored};

use super::fused::FusedBert;
use super::gguf::{Gguf, Tensor};
use super::{ModelFiles, Precision};

/// Bumped whenever a precision's arrays or how they are computed change: older files are stale.
const FORMAT: &str = "xbench quantized layers 2";

/// The kind of model a cache holds: its tag in the file and its layers' four products, in the
/// order they are saved and read.
pub struct Layers {
    pub architecture: &'static str,
    pub products: [&'static str; 4],
}

/// A cross-encoder's layers ([`FusedBert`]).
pub const CROSS_ENCODER: Layers = Layers {
    architecture: "xbench-cross-encoder",
    products: ["qkv", "attention_output", "intermediate", "output"],
};

/// A generative reranker's decoder layers ([`super::decoder::FusedDecoder`]).
pub const DECODER: Layers = Layers {
    architecture: "xbench-generative-reranker",
    products: ["qkv", "o", "gate_up", "down"],
};

/// Which cache: of which checkpoint, precision and kind of model, and (where the calibration
/// pairs' tokens depend on more than the weights, as a prompt template's do) their fingerprint.
pub struct Key<'a> {
    pub files: &'a ModelFiles,
    pub precision: Precision,
    pub layers: &'a Layers,
    pub calibration: Option<String>,
}

impl Key<'_> {
    /// Where the cache lives: beside `config.json`.
    pub fn path(&self) -> Option<PathBuf> {
        path(self.files, self.precision)
    }

    fn metadata(&self) -> Result<Vec<(String, String)>, String> {
        let mut m = vec![
            (
                "general.architecture".into(),
                self.layers.architecture.into(),
            ),
            ("xbench.format".into(), FORMAT.into()),
            ("xbench.precision".into(), self.precision.name().into()),
            ("xbench.source".into(), source(self.files)?),
        ];
        if let Some(c) = &self.calibration {
            m.push(("xbench.calibration".into(), c.clone()));
        }
        Ok(m)
    }
}

/// A fingerprint of token ids (FNV-1a, 64 bits, in hex): stable across builds and platforms.
pub fn fingerprint(ids: &[u32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for b in id.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

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

/// Writes the converted products of `layers` (four per layer, in `key.layers`' order) to the
/// cache `key` names.
pub fn save_layers<'a>(
    key: &Key,
    layers: impl IntoIterator<Item = [&'a Linear; 4]>,
) -> Result<PathBuf, String> {
    let path = key.path().ok_or("the model has no directory")?;
    let mut g = Gguf::default();
    g.metadata.extend(key.metadata()?);
    for (l, products) in layers.into_iter().enumerate() {
        for (name, product) in key.layers.products.iter().zip(products) {
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

/// The stored arrays of every layer (its four products each), and the file they came from.
pub type Cached = (PathBuf, Vec<[Stored; 4]>);

/// The stored arrays of `count` layers from the cache `key` names: `Ok(None)` when there is no
/// cache or it was made from something else (stale), an error when it is damaged. Each layer's
/// arrays become a product again through [`Linear::from_stored`] on its fp32 layer.
pub fn read_layers(key: &Key, count: usize) -> Result<Option<Cached>, String> {
    let Some(path) = key.path() else {
        return Ok(None);
    };
    if !path.is_file() || key.precision == Precision::Fp32 {
        return Ok(None);
    }
    let g = Gguf::read(&path)?;
    for (k, want) in key.metadata()? {
        if g.metadata.get(&k) != Some(&want) {
            return Ok(None);
        }
    }
    let mut t = Tensors { g, path: &path };
    let mut layers = Vec::with_capacity(count);
    for l in 0..count {
        let mut four = Vec::with_capacity(4);
        for name in key.layers.products {
            let name = |field: &str| format!("blk.{l}.{name}.{field}");
            four.push(match key.precision {
                Precision::Int8 => Stored::Int8 {
                    packed: t.i8(name("packed"))?,
                    scales: t.f32(name("scales"))?,
                    col_sums: t.i32(name("col_sums"))?,
                    smooth: t.f32(name("smooth"))?,
                },
                Precision::Int4 => Stored::Int4 {
                    packed: t
                        .i8(name("nibbles"))?
                        .into_iter()
                        .map(|b| b as u8)
                        .collect(),
                    scales: t.f16(name("scales"))?,
                    offsets: t.f32(name("offsets"))?,
                    smooth: t.f32(name("smooth"))?,
                },
                Precision::Bf16 => Stored::Half {
                    kind: HalfKind::Bf16,
                    packed: t.bf16(name("packed"))?,
                },
                Precision::Fp16 => Stored::Half {
                    kind: HalfKind::F16,
                    packed: t.f16(name("packed"))?,
                },
                Precision::Fp32 => return Ok(None),
            });
        }
        let four: [Stored; 4] = four
            .try_into()
            .map_err(|_| "four products per layer".to_string())?;
        layers.push(four);
    }
    Ok(Some((path.clone(), layers)))
}

/// Writes `model`'s converted products to the cache of `precision`.
pub fn save(
    files: &ModelFiles,
    precision: Precision,
    model: &FusedBert,
) -> Result<PathBuf, String> {
    let key = Key {
        files,
        precision,
        layers: &CROSS_ENCODER,
        calibration: None,
    };
    save_layers(
        &key,
        model
            .layers
            .iter()
            .map(|l| [&l.qkv, &l.attention_output, &l.intermediate, &l.output]),
    )
}

/// Converts `model`'s fp32 products from the cache of `precision`: `Ok(None)` when there is no
/// cache or it was made from something else (stale), an error when it is damaged.
pub fn load(
    files: &ModelFiles,
    precision: Precision,
    model: &mut FusedBert,
) -> Result<Option<PathBuf>, String> {
    let key = Key {
        files,
        precision,
        layers: &CROSS_ENCODER,
        calibration: None,
    };
    let Some((path, stored)) = read_layers(&key, model.layers.len())? else {
        return Ok(None);
    };
    let mut converted = Vec::with_capacity(stored.len());
    for (l, (layer, four)) in model.layers.iter().zip(stored).enumerate() {
        let products = [
            &layer.qkv,
            &layer.attention_output,
            &layer.intermediate,
            &layer.output,
        ];
        converted.push(convert(&path, l, &CROSS_ENCODER, products, four)?);
    }
    for (layer, [qkv, attention_output, intermediate, output]) in
        model.layers.iter_mut().zip(converted)
    {
        layer.qkv = qkv;
        layer.attention_output = attention_output;
        layer.intermediate = intermediate;
        layer.output = output;
    }
    Ok(Some(path))
}

/// Layer `l`'s four products from their stored arrays (read from `path`), each on the shape
/// and bias of its fp32 product.
pub fn convert(
    path: &std::path::Path,
    l: usize,
    layers: &Layers,
    fp32: [&Linear; 4],
    stored: [Stored; 4],
) -> Result<[Linear; 4], String> {
    let mut out = Vec::with_capacity(4);
    for ((name, product), s) in layers.products.iter().zip(fp32).zip(stored) {
        out.push(
            product
                .from_stored(s)
                .map_err(|e| format!("{}: blk.{l}.{name}: {e}", path.display()))?,
        );
    }
    out.try_into()
        .map_err(|_| "four products per layer".to_string())
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
