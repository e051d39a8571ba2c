//! Cross-encoder models: finding the files, reading `config.json`, choosing the architecture and
//! loading the weights with candle ([`load_encoder`]). The backends ([`crate::backend`]) run them.
//!
//! The architectures are a registry ([`family`]: BERT, XLM-RoBERTa, DistilBERT), picked by the
//! `architectures` entry of `config.json`; the encoder they share is [`encoder`] (candle's forward
//! pass) and [`fused`] (the same model laid out for xbench's kernels).

pub mod calibration;
pub mod deberta;
pub mod decoder;
pub mod decoder_candle;
pub mod encoder;
pub mod family;
pub mod files;
pub mod fused;
mod gguf;
pub mod modernbert;
pub(crate) mod quant_cache;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

pub use files::ModelFiles;

use crate::batch::Batch;

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
    #[error("{}: unsupported architecture {found}; supported: {}", .path.display(), family::architectures().join(", "))]
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
    #[error("model '{name}': {why}")]
    Unsupported { name: String, why: String },
    #[error("cannot calibrate int8 for '{name}': {why}")]
    Calibration { name: String, why: String },
}

/// How a backend came by its converted layers ([`crate::backend::load`] with
/// `quantization_cache`).
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

impl CacheUse {
    /// What writing freshly computed layers came to: `saved` is the write's outcome, `damaged`
    /// why the cache that was there could not be read (if it could not). Logged for `model`.
    pub fn after_writing(
        model: &str,
        saved: Result<PathBuf, String>,
        damaged: Option<String>,
    ) -> Self {
        match saved {
            Ok(path) => {
                tracing::info!(model, path = %path.display(), "wrote the quantized layers");
                match damaged {
                    Some(why) => Self::Replaced { path, why },
                    None => Self::Written(path),
                }
            }
            Err(why) => {
                tracing::warn!(model, %why, "cannot cache the quantized layers");
                Self::Failed(why)
            }
        }
    }
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
    /// ops (other devices, `backend: candle`): every weight and activation in bf16, LayerNorm in
    /// f32 as candle computes it.
    Bf16,
    /// fp16, as bf16 says for the four products (on x86 CPUs, fp16 weights are widened to f32 in
    /// registers: half the weight memory and fp16's rounding, not more speed); attention stays
    /// f32.
    Fp16,
    /// The encoder layers' products in int8: weights per output column, activations per token,
    /// i32 accumulation (AVX-512 VNNI where the CPU has it, AVX2 elsewhere on x86, the same
    /// integers either way). Embeddings, LayerNorm, attention,
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
    pub fn candle_dtype(self) -> Option<DType> {
        match self {
            Precision::Fp32 => Some(DType::F32),
            Precision::Bf16 => Some(DType::BF16),
            Precision::Fp16 => Some(DType::F16),
            Precision::Int8 | Precision::Int4 => None,
        }
    }
}

/// What computes a model (`backend` of a model instance; see [`crate::backend`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// xbench's fused CPU kernels ([`fused`], [`crate::kernels`]): every precision, CPU only.
    #[default]
    Fused,
    /// candle's own ops, one tensor op at a time: any device; fp32, fp16 and bf16.
    Candle,
}

impl BackendKind {
    pub const ALL: [BackendKind; 2] = [BackendKind::Fused, BackendKind::Candle];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Fused => "fused",
            BackendKind::Candle => "candle",
        }
    }

    /// Parses a config value; the error says what is available.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == text)
            .ok_or_else(|| format!("'{text}' is not a backend; available: fused, candle"))
    }

    /// Why this backend cannot run `precision` on `device`, if it cannot.
    pub fn refuses(self, precision: Precision, device: &str) -> Option<String> {
        match self {
            BackendKind::Fused if device != "cpu" => Some(format!(
                "backend fused runs on the CPU; device {device} needs backend: candle"
            )),
            BackendKind::Candle if precision.needs_fused() => Some(format!(
                "{} runs on backend fused (device cpu); use backend: fused, or quantization fp32, fp16 or bf16 on backend candle",
                precision.name()
            )),
            _ => None,
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
    /// What computes it: the precision and the backend.
    pub precision: Precision,
    pub backend: BackendKind,
    /// A generative reranker's prompt template (its name, or the YAML file it came from); none
    /// for a cross-encoder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A cross-encoder loaded with candle: what the candle backend runs and the fused backend lays
/// out for its kernels.
pub trait CrossEncoder: Send + Sync {
    /// Logits `[pairs, num_labels]` on the packed tokens of `batch`.
    fn forward(&self, batch: &Batch, device: &Device) -> candle_core::Result<Tensor>;
    /// The same over the padded rectangle, as transformers computes a padded batch.
    fn forward_padded(&self, batch: &Batch, device: &Device) -> candle_core::Result<Tensor>;
    /// The weights laid out for the fused CPU pass.
    fn fused(&self) -> candle_core::Result<fused::FusedBert>;
}

impl CrossEncoder for encoder::Encoder {
    fn forward(&self, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
        encoder::Encoder::forward(self, batch, device)
    }
    fn forward_padded(&self, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
        encoder::Encoder::forward_padded(self, batch, device)
    }
    fn fused(&self) -> candle_core::Result<fused::FusedBert> {
        encoder::Encoder::fused(self)
    }
}

impl CrossEncoder for modernbert::ModernBert {
    fn forward(&self, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
        modernbert::ModernBert::forward(self, batch, device)
    }
    fn forward_padded(&self, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
        modernbert::ModernBert::forward_padded(self, batch, device)
    }
    fn fused(&self) -> candle_core::Result<fused::FusedBert> {
        modernbert::ModernBert::fused(self)
    }
}

/// Reads `config.json`, picks the family of its architecture and loads the weights onto `device`
/// in `dtype` with candle: the model both backends start from. `info.backend` is `backend`.
pub fn load_encoder(
    files: &ModelFiles,
    device: &Device,
    dtype: DType,
    backend: BackendKind,
) -> Result<(Box<dyn CrossEncoder>, ModelInfo), ModelError> {
    let text = read_text(&files.config)?;
    let head: ConfigHead = parse_json(&files.config, &text)?;
    let (architecture, family) = architecture_of(&files.config, &head)?;
    // SAFETY: the weight files are memory-mapped read-only; xbench never writes them, and a
    // checkpoint replaced on disk while mapped is the same hazard every safetensors user accepts.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, dtype, device) }
        .map_err(|source| ModelError::Weights {
            name: files.name.clone(),
            source,
        })?;
    let weights = |source| ModelError::Weights {
        name: files.name.clone(),
        source,
    };
    let precision = match dtype {
        DType::BF16 => Precision::Bf16,
        DType::F16 => Precision::Fp16,
        _ => Precision::Fp32,
    };
    let (model, info): (Box<dyn CrossEncoder>, ModelInfo) = match &family.encoder {
        family::EncoderKind::Bert(layout) => {
            let config = (layout.config)(&files.config, &text)?;
            let model =
                encoder::Encoder::load(vb, &config, layout, family.name).map_err(weights)?;
            let info = ModelInfo {
                name: files.name.clone(),
                architecture,
                num_labels: config.num_labels(),
                labels: config.labels(),
                hidden_size: config.hidden_size,
                num_layers: config.num_hidden_layers,
                max_positions: layout.max_positions(&config),
                precision,
                backend,
                template: None,
            };
            (Box::new(model), info)
        }
        family::EncoderKind::ModernBert => {
            let config = modernbert::ModernBertConfig::read(&files.config, &text)?;
            let model = modernbert::ModernBert::load(vb, &config).map_err(weights)?;
            let info = ModelInfo {
                name: files.name.clone(),
                architecture,
                num_labels: config.num_labels,
                labels: config.labels.clone(),
                hidden_size: config.hidden_size,
                num_layers: config.num_hidden_layers,
                max_positions: config.max_position_embeddings,
                precision,
                backend,
                template: None,
            };
            (Box::new(model), info)
        }
        family::EncoderKind::Decoder(_) => {
            return Err(ModelError::Unsupported {
                name: files.name.clone(),
                why: format!(
                    "{architecture} is a generative reranker, loaded by backend::load, not as a cross-encoder"
                ),
            })
        }
    };
    Ok((model, info))
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

/// The family of the model in `files`, where its `config.json` reads and names one.
pub fn family_of(files: &ModelFiles) -> Option<&'static family::Family> {
    let text = read_text(&files.config).ok()?;
    let head: ConfigHead = parse_json(&files.config, &text).ok()?;
    architecture_of(&files.config, &head)
        .ok()
        .map(|(_, family)| family)
}

/// The architecture the `config.json` of `files` names and the family that loads it.
pub fn architecture(files: &ModelFiles) -> Result<(String, &'static family::Family), ModelError> {
    let text = read_text(&files.config)?;
    let head: ConfigHead = parse_json(&files.config, &text)?;
    architecture_of(&files.config, &head)
}

/// The architecture `config.json` names and the family that loads it.
fn architecture_of(
    path: &Path,
    head: &ConfigHead,
) -> Result<(String, &'static family::Family), ModelError> {
    let found = match head.architectures.as_deref() {
        Some([one]) => match family::find(one) {
            Some(family) => return Ok((one.clone(), family)),
            None => one.clone(),
        },
        Some([]) | None => format!(
            "(none listed; model_type {})",
            head.model_type.as_deref().unwrap_or("unknown")
        ),
        Some(list) => list.join(", "),
    };
    Err(ModelError::UnsupportedArchitecture {
        path: path.to_path_buf(),
        found,
    })
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
