//! Backends: what turns packed batches into logits. [`load`] is the one way anything gets a model
//! (the engine, `xbench score`, `xbench accuracy`, the sweeps' accuracy pass, the benches and the
//! parity tests): it resolves the model's files, loads the weights on the backend the spec names
//! ([`BackendKind`]: [`FusedBackend`], xbench's CPU kernels, or [`CandleBackend`], candle's ops)
//! at its precision, and loads the tokenizer. The engine drives a loaded [`Backend`] through the
//! trait alone; each backend decides where its computation runs ([`Backend::executor`]).

mod candle;
mod decoder;
mod fused;

use std::sync::Arc;

use crate::batch::Batch;
use crate::model::family;
use crate::model::{parse_device, ModelError, ModelFiles, ModelInfo, Precision};
pub use crate::model::{BackendKind, CacheUse};
use crate::tokenize::{LongDocuments, PairTokenizer, TokenizeError};
pub use candle::CandleBackend;
pub use decoder::DecoderBackend;
pub use fused::FusedBackend;

/// What one model is loaded as: its files, device, backend and precision, and how the engine
/// runs it (workers × threads).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A local directory or a hub id; requests name the model by it.
    pub name: String,
    /// Model workers: instance threads sharing one copy of the weights, each taking batches from
    /// this model's batcher (`workers` of a `model_pool.instances` entry).
    #[serde(default = "one")]
    pub workers: usize,
    /// Compute threads per worker; default: the cores divided evenly among all workers.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Truncation length in tokens; default: the model's limit.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// cpu, cuda[:N] or metal[:N].
    #[serde(default = "cpu")]
    pub device: String,
    /// fused (xbench's CPU kernels) or candle (candle's ops).
    #[serde(default)]
    pub backend: BackendKind,
    /// fp32, fp16, bf16, int8 or int4 (int8 and int4 on the fused backend only).
    #[serde(default)]
    pub quantization: Precision,
    /// Keep the quantized layers in `xbench-<precision>.gguf` beside the checkpoint and reuse
    /// them at the next load.
    #[serde(default)]
    pub quantization_cache: bool,
    /// What becomes of a passage too long to fit beside its query when a request does not say:
    /// `truncate` or `chunk_max` (windows overlapping by `chunk_overlap_tokens`).
    #[serde(default)]
    pub long_documents: LongDocuments,
    #[serde(default = "default_overlap")]
    pub chunk_overlap_tokens: usize,
    /// A generative reranker's prompt template: `qwen3_reranker`, `mxbai_rerank_v2`,
    /// `bge_gemma` or a YAML file ([`crate::prompt`]); default the family's.
    #[serde(default)]
    pub template: Option<String>,
    /// A generative reranker's answer tokens (`[no, yes]`, `[yes]`); default the template's.
    #[serde(default)]
    pub answer_tokens: Option<Vec<String>>,
    /// A generative reranker's instruction when a request gives none; default the template's.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Other names requests may give for this model (`model`), as vLLM's `--served-model-name`.
    #[serde(default)]
    pub served_model_names: Vec<String>,
}

/// Tokens consecutive windows of a split passage share unless configured.
pub const DEFAULT_CHUNK_OVERLAP_TOKENS: usize = 32;

fn default_overlap() -> usize {
    DEFAULT_CHUNK_OVERLAP_TOKENS
}

fn one() -> usize {
    1
}
fn cpu() -> String {
    "cpu".to_string()
}

impl ModelSpec {
    /// `name` on the default backend, in fp32, one instance on the CPU.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            workers: 1,
            threads: None,
            max_length: None,
            device: cpu(),
            backend: BackendKind::default(),
            quantization: Precision::default(),
            quantization_cache: false,
            long_documents: LongDocuments::default(),
            chunk_overlap_tokens: DEFAULT_CHUNK_OVERLAP_TOKENS,
            template: None,
            answer_tokens: None,
            instruction: None,
            served_model_names: Vec::new(),
        }
    }
}

/// Failures of a loaded backend on a batch. Cloneable: a failed batch fails each of its requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("inference failed")]
    Inference(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("the backend returned {got} logits for {pairs} pairs of {labels} labels")]
    Shape {
        got: usize,
        pairs: usize,
        labels: usize,
    },
    #[error("model instance panicked: {0}")]
    Panic(String),
    #[error("{what} is not something the {backend} backend does")]
    Unsupported {
        what: &'static str,
        backend: &'static str,
    },
}

impl BackendError {
    /// A failed forward pass, keeping what caused it.
    pub fn inference(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError::Inference(Arc::new(cause))
    }
}

impl From<ModelError> for BackendError {
    fn from(e: ModelError) -> Self {
        BackendError::inference(e)
    }
}

/// Failures of [`load`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot load the tokenizer")]
    Tokenizer(#[from] TokenizeError),
}

/// Where one model instance's forward passes run: a pool of compute threads of its own (CPU
/// backends), or the calling thread.
pub struct Executor {
    pool: Option<rayon::ThreadPool>,
}

impl Executor {
    /// Runs on the calling thread (and rayon's global pool, if the work uses it).
    pub fn current() -> Self {
        Self { pool: None }
    }

    /// A rayon pool of `threads` threads named after the model and instance; the calling thread
    /// (with a warning) if the pool cannot be built.
    pub fn threads(model: &str, index: usize, threads: usize) -> Self {
        let short = model.rsplit('/').next().unwrap_or(model).to_string();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |t| format!("compute-{short}-{index}-{t}"))
            .build();
        match pool {
            Ok(pool) => Self { pool: Some(pool) },
            Err(e) => {
                tracing::warn!(model, index, error = %e, "no compute pool; using the global one");
                Self::current()
            }
        }
    }

    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// One loaded model's compute. Several instance threads share one backend (one copy of the
/// weights) and call it concurrently, each through its own [`Executor`].
pub trait Backend: Send + Sync {
    /// Whether the backend computes the padded rectangle `pairs × longest` (true) or only the real
    /// tokens (false). The batcher counts tokens the way the backend computes them.
    fn is_padded(&self) -> bool;
    /// Logits per pair: 1 for a reranker.
    fn labels(&self) -> usize {
        1
    }
    /// Every pair's logits in batch order, `[pairs × labels]` row-major.
    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError>;
    /// Runs one tiny batch; an error means the backend cannot serve.
    fn health(&self) -> Result<(), BackendError> {
        let mut batch = Batch::new();
        batch.push(&[0, 0, 0], &[0, 0, 0]);
        self.predict(&batch).map(|_| ())
    }
    /// Where instance `index` of `model` runs its batches with `threads` compute threads.
    fn executor(&self, _model: &str, _index: usize, _threads: usize) -> Executor {
        Executor::current()
    }
    /// [`Backend::predict`] over the padded rectangle `[pairs, longest]`: the reference the
    /// packed paths are tested against. Not every backend computes it.
    fn predict_padded(&self, _batch: &Batch) -> Result<Vec<f32>, BackendError> {
        Err(BackendError::Unsupported {
            what: "the padded forward pass",
            backend: "this",
        })
    }
    /// Bytes of the encoder layers' product weights, where the backend keeps them itself.
    fn layer_weight_bytes(&self) -> Option<usize> {
        None
    }
}

/// A model ready to score: its backend, what was loaded, and its tokenizer.
pub struct LoadedModel {
    pub backend: Arc<dyn Backend>,
    pub info: ModelInfo,
    pub tokenizer: PairTokenizer,
    /// How the quantized layers were come by (with `quantization_cache`).
    pub cache: CacheUse,
}

/// The code a model's products run: on the fused backend the kernel of `precision` at this CPU's
/// SIMD level ([`xbench_kernels::kernels`]), `candle` for candle's ops.
pub fn kernel_name(backend: BackendKind, precision: Precision) -> &'static str {
    match backend {
        BackendKind::Candle => "candle",
        BackendKind::Fused => xbench_kernels::kernels()
            .into_iter()
            .find(|(p, _)| *p == precision.name())
            .map_or("fused", |(_, k)| k),
    }
}

/// Loads `spec`'s model on its backend, at its precision, with its tokenizer.
pub fn load(spec: &ModelSpec) -> Result<LoadedModel, LoadError> {
    let files = ModelFiles::resolve(&spec.name)?;
    if let Some(why) = spec.backend.refuses(spec.quantization, &spec.device) {
        return Err(ModelError::Unsupported {
            name: spec.name.clone(),
            why,
        }
        .into());
    }
    let (architecture, family) = crate::model::architecture(&files)?;
    if let family::EncoderKind::Decoder(layout) = &family.encoder {
        let (backend, tokenizer, cache) =
            DecoderBackend::load(&files, spec, layout, &architecture)?;
        let info = backend.info().clone();
        log_loaded(spec, &info);
        return Ok(LoadedModel {
            backend: Arc::new(backend),
            info,
            tokenizer,
            cache,
        });
    }
    for (key, set) in [
        ("template", spec.template.is_some()),
        ("answer_tokens", spec.answer_tokens.is_some()),
        ("instruction", spec.instruction.is_some()),
    ] {
        if set {
            return Err(ModelError::Unsupported {
                name: spec.name.clone(),
                why: format!(
                    "{key} is a generative reranker's setting, and {architecture} is a cross-encoder ({} family)",
                    family.name
                ),
            }
            .into());
        }
    }
    let device = parse_device(&spec.device)?;
    let (backend, info, cache): (Arc<dyn Backend>, ModelInfo, CacheUse) = match spec.backend {
        BackendKind::Fused => {
            let (backend, cache) =
                FusedBackend::load(&files, spec.quantization, spec.quantization_cache)?;
            let info = backend.info().clone();
            (Arc::new(backend), info, cache)
        }
        BackendKind::Candle => {
            let backend = CandleBackend::load(&files, &device, spec.quantization)?;
            let info = backend.info().clone();
            (Arc::new(backend), info, CacheUse::None)
        }
    };
    let tokenizer = PairTokenizer::load(&files, info.max_positions, spec.max_length)?
        .with_long_documents(spec.long_documents, spec.chunk_overlap_tokens);
    if let Some(template) = &family.template {
        template.check(family, &tokenizer, &files.tokenizer)?;
    }
    log_loaded(spec, &info);
    Ok(LoadedModel {
        backend,
        info,
        tokenizer,
        cache,
    })
}

/// The "model loaded" log line.
fn log_loaded(spec: &ModelSpec, info: &ModelInfo) {
    tracing::info!(
        model = %spec.name,
        backend = info.backend.name(),
        precision = info.precision.name(),
        device = %spec.device,
        simd = match info.backend {
            BackendKind::Fused => xbench_kernels::simd().name(),
            BackendKind::Candle => "candle's",
        },
        kernel = kernel_name(info.backend, info.precision),
        template = info.template.as_deref().unwrap_or("-"),
        "model loaded"
    );
}
