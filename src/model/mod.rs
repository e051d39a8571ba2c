//! Cross-encoder models: reading `config.json`, choosing the architecture, loading the weights with
//! candle and running the forward pass from a packed [`Batch`] to logits `[pairs, num_labels]`.
//!
//! The BERT family ([`bert::Family`]: BERT, XLM-RoBERTa, DistilBERT) lives in [`bert`], its fused
//! CPU pass in [`fused`]; another architecture (ELECTRA, ModernBERT) would slot in as a new
//! variant of [`CrossEncoder`]'s inner model.

pub mod bert;
pub mod calibration;
pub mod files;
pub mod fused;
mod gguf;
mod quant_cache;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::batch::Batch;
pub use files::ModelFiles;
use xbench_kernels::half::HalfKind;

/// Architectures (the `architectures` entry of `config.json`) that xbench can load.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "BertForSequenceClassification",
    "XLMRobertaForSequenceClassification",
    "DistilBertForSequenceClassification",
];

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory '{}' does not exist; pass a local directory in Hugging Face layout (config.json, tokenizer.json, model.safetensors) or a hub id such as cross-encoder/ms-marco-MiniLM-L-6-v2", .0.display())]
    DirNotFound(PathBuf),
    #[error("'{}' is a file, not a model directory; pass the directory that holds config.json, tokenizer.json and model.safetensors", .0.display())]
    NotADirectory(PathBuf),
    #[error("model directory '{}' has no {file}; a model directory needs config.json, tokenizer.json and model.safetensors", .dir.display())]
    MissingFile { dir: PathBuf, file: String },
    #[error("model directory '{}' has no model.safetensors{hint}", .dir.display())]
    MissingWeights { dir: PathBuf, hint: &'static str },
    #[error("'{id}' is not a valid hub id; write org/name or org/name@revision")]
    BadHubId { id: String },
    #[error("could not download {file} of model '{id}' from the Hugging Face hub ({reason}); if the model is on disk, pass its directory instead (--model path/to/dir holding config.json, tokenizer.json and model.safetensors), or point HF_HOME at a cache that holds it and set HF_HUB_OFFLINE=1")]
    Download {
        id: String,
        file: String,
        reason: String,
    },
    #[error("model '{id}' is not in the Hugging Face cache at {} ({file} is missing) and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it, or pass a local model directory", .cache.display())]
    NotCached {
        id: String,
        file: String,
        cache: PathBuf,
    },
    #[error("cannot read {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid model config", .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: unsupported architecture {found}; supported: {}", .path.display(), SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{}: {message}", .path.display())]
    InvalidConfig { path: PathBuf, message: String },
    #[error("cannot load the weights of '{name}'")]
    Weights {
        name: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("unknown device '{0}'; use cpu, cuda, cuda:N, metal or metal:N")]
    BadDevice(String),
    #[error("cannot open device '{name}'")]
    Device {
        name: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("forward pass failed")]
    Forward(#[from] candle_core::Error),
    #[error("forward pass failed")]
    Fused(#[from] fused::FusedError),
    #[error("{0} needs kernels: candle; this model was loaded with the fused kernels")]
    NeedsCandle(&'static str),
    #[error(
        "quantization {0} runs on the fused CPU kernels only: use kernels: fused and device: cpu"
    )]
    NeedsFused(&'static str),
    #[error("the model is already in {from}; load it again to convert it to {to}")]
    Requantize {
        from: &'static str,
        to: &'static str,
    },
    #[error("cannot calibrate int8 for '{name}': {why}")]
    Calibration { name: String, why: String },
}

/// How [`CrossEncoder::quantize_cached`] came by the converted layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// Nothing to cache (fp32, or candle's ops).
    None,
    /// Read from this file.
    Read(PathBuf),
    /// Computed and written to this file.
    Written(PathBuf),
    /// The file was damaged (why); computed and written over it.
    Replaced { path: PathBuf, why: String },
    /// Computed; the file could not be written (why).
    Failed(String),
}

/// The precision a model instance computes in (`quantization` of a model instance).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and activations: the reference.
    #[default]
    Fp32,
    /// bf16. Fused CPU kernels: the encoder layers' products take bf16 weights and activations
    /// rounded to bf16, accumulating in f32 (AVX-512 BF16's `vdpbf16ps` where the CPU has it),
    /// and so do attention's two products (queries, keys, values and probabilities rounded to
    /// bf16; softmax in f32); embeddings, LayerNorm, GELU, the pooler and the classifier stay
    /// f32. Candle's
    /// ops (other devices, `kernels: candle`): every weight and activation in bf16, LayerNorm in
    /// f32 as candle computes it.
    Bf16,
    /// fp16, as bf16 says for the four products (on x86 CPUs, fp16 weights are widened to f32 in
    /// registers: half the weight memory and fp16's rounding, not more speed); attention stays
    /// f32.
    Fp16,
    /// The encoder layers' products in int8: weights per output column, activations per token,
    /// i32 accumulation (AVX-512 VNNI where the CPU has it). Embeddings, LayerNorm, attention,
    /// the pooler and the classifier stay f32. Fused CPU kernels only.
    Int8,
    /// As int8 with 4-bit weights in groups of 32 inputs per output column (an fp16 scale each),
    /// unpacked to int8 in the kernel: about half of int8's weight memory.
    Int4,
}

impl Precision {
    /// Every precision, in the order the docs list them.
    pub const ALL: [Precision; 5] = [
        Precision::Fp32,
        Precision::Fp16,
        Precision::Bf16,
        Precision::Int8,
        Precision::Int4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
        }
    }

    /// Parses a config value; the error says what is available.
    pub fn parse(text: &str) -> Result<Self, String> {
        let available = || {
            Self::ALL
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match Self::ALL.iter().find(|p| p.name() == text) {
            Some(&p) => Ok(p),
            None => Err(format!(
                "'{text}' is not a precision; available: {}",
                available()
            )),
        }
    }

    /// Whether only the fused CPU kernels run it.
    pub fn needs_fused(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Int4)
    }

    /// The dtype candle's ops load the weights in for this precision.
    fn candle_dtype(self) -> Option<DType> {
        match self {
            Precision::Fp32 => Some(DType::F32),
            Precision::Bf16 => Some(DType::BF16),
            Precision::Fp16 => Some(DType::F16),
            Precision::Int8 | Precision::Int4 => None,
        }
    }
}

/// How a CPU fp32 forward pass is computed (`kernels` of a model instance).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// xbench's fused kernels ([`fused`], [`crate::kernels`]): the default on CPU in fp32.
    #[default]
    Fused,
    /// candle's own ops, one tensor op at a time; what other devices and precisions run.
    Candle,
}

impl Kernels {
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fused => "fused",
            Kernels::Candle => "candle",
        }
    }
}

/// The architecture-independent head of `config.json`.
#[derive(Debug, Deserialize)]
struct ConfigHead {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
}

/// What was loaded, for logs and `/info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub architecture: String,
    pub num_labels: usize,
    /// The label names of `id2label`, in id order (`LABEL_i` where the config names none).
    pub labels: Vec<String>,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// Longest sequence (in tokens, special tokens included) the position embeddings allow.
    pub max_positions: usize,
    /// What computes it: the precision and the kernels.
    pub precision: Precision,
    pub kernels: Kernels,
}

enum Inner {
    Bert(bert::BertForSequenceClassification),
    FusedBert(Box<fused::FusedBert>),
}

/// A loaded cross-encoder on one device.
pub struct CrossEncoder {
    inner: Inner,
    info: ModelInfo,
    device: Device,
    precision: Precision,
    files: ModelFiles,
}

impl CrossEncoder {
    /// Reads `config.json`, checks the architecture and loads the weights onto `device`.
    /// Loads with the default kernels: fused on CPU in fp32, candle elsewhere.
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        Self::load_with(files, device, dtype, Kernels::default())
    }

    /// Loads with `kernels` where they apply (the fused kernels run on CPU in fp32 only; anything
    /// else runs candle's ops whatever `kernels` says: [`CrossEncoder::kernels`] tells which).
    pub fn load_with(
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
        kernels: Kernels,
    ) -> Result<Self, ModelError> {
        let fuse = kernels == Kernels::Fused && device.is_cpu() && dtype == DType::F32;
        let text = read_text(&files.config)?;
        let head: ConfigHead = parse_json(&files.config, &text)?;
        let architecture = architecture_of(&files.config, &head)?;
        // SAFETY: the weight files are memory-mapped read-only; xbench never writes them, and a
        // checkpoint replaced on disk while mapped is the same hazard every safetensors user accepts.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, dtype, device) }
            .map_err(|source| ModelError::Weights {
                name: files.name.clone(),
                source,
            })?;
        let family =
            bert::Family::of(&architecture).ok_or_else(|| ModelError::UnsupportedArchitecture {
                path: files.config.clone(),
                found: architecture.clone(),
            })?;
        let config = family.config(&files.config, &text)?;
        let weights = |source| ModelError::Weights {
            name: files.name.clone(),
            source,
        };
        let model =
            bert::BertForSequenceClassification::load(vb, &config, family).map_err(weights)?;
        let inner = if fuse {
            Inner::FusedBert(Box::new(model.fused().map_err(weights)?))
        } else {
            Inner::Bert(model)
        };
        let info = ModelInfo {
            name: files.name.clone(),
            architecture,
            num_labels: config.num_labels(),
            labels: config.labels(),
            hidden_size: config.hidden_size,
            num_layers: config.num_hidden_layers,
            max_positions: family.max_positions(&config),
            precision: match dtype {
                DType::BF16 => Precision::Bf16,
                DType::F16 => Precision::Fp16,
                _ => Precision::Fp32,
            },
            kernels: if fuse {
                Kernels::Fused
            } else {
                Kernels::Candle
            },
        };
        Ok(Self {
            inner,
            device: device.clone(),
            precision: info.precision,
            info,
            files: files.clone(),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The kernels this model runs.
    pub fn kernels(&self) -> Kernels {
        match self.inner {
            Inner::Bert(_) => Kernels::Candle,
            Inner::FusedBert(_) => Kernels::Fused,
        }
    }

    /// Converts the loaded weights to `precision` (from fp32; done once, at load). int8 first
    /// runs the built-in calibration pairs ([`calibration::PAIRS`]) in fp32 to measure each
    /// product's input ranges, which it smooths by.
    pub fn quantize(&mut self, precision: Precision) -> Result<(), ModelError> {
        self.convert(precision)?;
        self.info.precision = self.precision;
        Ok(())
    }

    fn convert(&mut self, precision: Precision) -> Result<(), ModelError> {
        if self.precision == precision {
            return Ok(());
        }
        if self.precision != Precision::Fp32 {
            return Err(ModelError::Requantize {
                from: self.precision.name(),
                to: precision.name(),
            });
        }
        match (precision, &mut self.inner) {
            (Precision::Fp32, _) => Ok(()),
            (Precision::Bf16 | Precision::Fp16, Inner::FusedBert(m)) => {
                m.to_half(match precision {
                    Precision::Bf16 => HalfKind::Bf16,
                    _ => HalfKind::F16,
                });
                self.precision = precision;
                Ok(())
            }
            (Precision::Bf16 | Precision::Fp16, Inner::Bert(_)) => {
                // candle's ops: load the checkpoint again in that dtype.
                let dtype = precision.candle_dtype().unwrap_or(DType::F32);
                let reloaded = Self::load_with(&self.files, &self.device, dtype, Kernels::Candle)?;
                self.inner = reloaded.inner;
                self.precision = precision;
                Ok(())
            }
            (Precision::Int8 | Precision::Int4, Inner::FusedBert(m)) => {
                let failed = |why: String| ModelError::Calibration {
                    name: self.files.name.clone(),
                    why,
                };
                let tokenizer = crate::tokenize::PairTokenizer::load(
                    &self.files,
                    self.info.max_positions,
                    None,
                )
                .map_err(|e| failed(e.to_string()))?;
                let batch = tokenizer
                    .encode_batch(calibration::PAIRS.iter().copied())
                    .map_err(|e| failed(e.to_string()))?;
                let width = match precision {
                    Precision::Int4 => fused::IntWidth::Int4,
                    _ => fused::IntWidth::Int8,
                };
                m.quantize_integer(width, Some(&batch))?;
                self.precision = precision;
                Ok(())
            }
            (Precision::Int8 | Precision::Int4, Inner::Bert(_)) => {
                Err(ModelError::NeedsFused(precision.name()))
            }
        }
    }

    /// [`CrossEncoder::quantize`] through the cache of quantized layers beside the checkpoint
    /// (`xbench-<precision>.gguf`, see [`quant_cache`]): read when it was made from these weight
    /// files by this version of xbench's quantization, else computed and written. The fused
    /// kernels' precisions only; otherwise the same as `quantize`. A cache that cannot be read or
    /// written is logged and computed around, never an error.
    pub fn quantize_cached(&mut self, precision: Precision) -> Result<CacheUse, ModelError> {
        let fused = matches!(self.inner, Inner::FusedBert(_));
        if precision == Precision::Fp32 || self.precision != Precision::Fp32 || !fused {
            self.quantize(precision)?;
            return Ok(CacheUse::None);
        }
        let mut damaged = None;
        if let Inner::FusedBert(m) = &mut self.inner {
            match quant_cache::load(&self.files, precision, m) {
                Ok(Some(path)) => {
                    self.precision = precision;
                    self.info.precision = precision;
                    tracing::info!(model = %self.files.name, path = %path.display(), "read the quantized layers");
                    return Ok(CacheUse::Read(path));
                }
                Ok(None) => {}
                Err(why) => {
                    tracing::warn!(model = %self.files.name, %why, "ignoring a damaged cache of quantized layers");
                    damaged = Some(why);
                }
            }
        }
        self.quantize(precision)?;
        let Inner::FusedBert(m) = &self.inner else {
            return Ok(CacheUse::None);
        };
        match quant_cache::save(&self.files, precision, m) {
            Ok(path) => {
                tracing::info!(model = %self.files.name, path = %path.display(), "wrote the quantized layers");
                Ok(match damaged {
                    Some(why) => CacheUse::Replaced { path, why },
                    None => CacheUse::Written(path),
                })
            }
            Err(why) => {
                tracing::warn!(model = %self.files.name, %why, "cannot cache the quantized layers");
                Ok(CacheUse::Failed(why))
            }
        }
    }

    /// The precision the model computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of the encoder layers' product weights (fused kernels; `None` on candle's ops).
    pub fn layer_weight_bytes(&self) -> Option<usize> {
        match &self.inner {
            Inner::FusedBert(m) => Some(m.layer_weight_bytes()),
            Inner::Bert(_) => None,
        }
    }

    /// Logits `[pairs, num_labels]` for a packed batch, computed without padding.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor, ModelError> {
        let logits = match &self.inner {
            Inner::Bert(m) => m.forward(batch, &self.device)?,
            Inner::FusedBert(m) => {
                let logits = m.forward(batch)?;
                Tensor::from_vec(logits, (batch.pairs(), m.num_labels()), &self.device)?
            }
        };
        Ok(logits)
    }

    /// [`CrossEncoder::forward`] over the padded rectangle `[pairs, longest]`: the reference the
    /// packed paths are tested against, and the layout for devices that want rectangles. Candle
    /// kernels only.
    pub fn forward_padded(&self, batch: &Batch) -> Result<Tensor, ModelError> {
        match &self.inner {
            Inner::Bert(m) => Ok(m.forward_padded(batch, &self.device)?),
            Inner::FusedBert(_) => Err(ModelError::NeedsCandle("forward_padded")),
        }
    }

    /// Every pair's logits in batch order, `[pairs × num_labels]` row-major, as f32 on the host.
    pub fn logits(&self, batch: &Batch) -> Result<Vec<f32>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if let Inner::FusedBert(m) = &self.inner {
            return Ok(m.forward(batch)?);
        }
        let logits = self.forward(batch)?;
        Ok(logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Every pair's relevance score ([`relevance`] of its logits), in batch order.
    pub fn predict(&self, batch: &Batch) -> Result<Vec<f32>, ModelError> {
        let logits = self.logits(batch)?;
        Ok(logits
            .chunks_exact(self.info.num_labels)
            .map(relevance)
            .collect())
    }
}

/// The relevance score of a pair from its logits (a raw score, before any sigmoid). A one-label
/// model's logit; with more labels, the log-odds of the last label against all the others
/// (`l_last - logsumexp(others)`), so that its sigmoid is the last label's softmax probability:
/// the "relevant" class of two-label rerankers and the top grade of graded ones.
pub fn relevance(logits: &[f32]) -> f32 {
    match logits {
        [] => f32::NAN,
        [one] => *one,
        [others @ .., last] => {
            let max = others.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = others.iter().map(|l| (l - max).exp()).sum();
            last - (max + sum.ln())
        }
    }
}

fn architecture_of(path: &Path, head: &ConfigHead) -> Result<String, ModelError> {
    match head.architectures.as_deref() {
        Some([one]) if SUPPORTED_ARCHITECTURES.contains(&one.as_str()) => Ok(one.clone()),
        Some([]) | None => Err(ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found: format!(
                "(none listed; model_type {})",
                head.model_type.as_deref().unwrap_or("unknown")
            ),
        }),
        Some(list) => Err(ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found: list.join(", "),
        }),
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ModelError> {
    serde_json::from_str(text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a device name: `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
pub fn parse_device(name: &str) -> Result<Device, ModelError> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((kind, n)) => (
            kind,
            n.parse::<usize>()
                .map_err(|_| ModelError::BadDevice(name.to_string()))?,
        ),
        None => (name, 0),
    };
    let opened = match kind {
        "cpu" if ordinal == 0 => return Ok(Device::Cpu),
        "cuda" => Device::new_cuda(ordinal),
        "metal" => Device::new_metal(ordinal),
        _ => return Err(ModelError::BadDevice(name.to_string())),
    };
    opened.map_err(|source| ModelError::Device {
        name: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(json: &str) -> ConfigHead {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn unsupported_architectures_name_the_supported_ones() {
        let err = architecture_of(
            Path::new("config.json"),
            &head(r#"{"architectures": ["BertModel"]}"#),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("BertModel"), "{err}");
        assert!(err.contains("BertForSequenceClassification"), "{err}");
        let err = architecture_of(Path::new("config.json"), &head(r#"{"model_type": "bert"}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none listed"), "{err}");
    }

    #[test]
    fn relevance_is_the_logit_or_the_last_labels_log_odds() {
        assert_eq!(relevance(&[1.5]), 1.5);
        assert_eq!(relevance(&[0.25, 1.5]), 1.25);
        let logits = [0.3f32, -1.2, 2.0];
        let sum: f32 = logits.iter().map(|l| l.exp()).sum();
        let p_last = logits[2].exp() / sum;
        let r = relevance(&logits);
        assert!((1.0 / (1.0 + (-r).exp()) - p_last).abs() < 1e-6, "{r}");
        // Large logits do not overflow.
        assert!((relevance(&[1000.0, 1000.0]) - 0.0).abs() < 1e-6);
        assert!(relevance(&[]).is_nan());
    }

    #[test]
    fn devices_parse() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(matches!(parse_device("tpu"), Err(ModelError::BadDevice(_))));
        assert!(matches!(
            parse_device("cuda:x"),
            Err(ModelError::BadDevice(_))
        ));
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(
            parse_device("cuda:0"),
            Err(ModelError::Device { .. })
        ));
    }
}
