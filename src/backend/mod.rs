//! The `Backend` trait: a small, synchronous interface that one model instance thread drives with
//! packed batches, and its candle implementation.

use candle_core::{DType, Device};

use crate::batch::Batch;
use crate::model::{CacheUse, CrossEncoder, Kernels, ModelError, ModelFiles, ModelInfo, Precision};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("model instance panicked: {0}")]
    Panic(String),
}

/// One model's compute, called from a single instance thread at a time per instance.
pub trait Backend: Send + Sync {
    /// Whether the backend computes the padded rectangle `pairs × longest` (true) or only the real
    /// tokens (false). The batcher counts tokens the way the backend computes them.
    fn is_padded(&self) -> bool;
    /// Runs one tiny batch; an error means the backend cannot serve.
    fn health(&self) -> Result<(), BackendError>;
    /// Logits per pair: 1 for a reranker.
    fn labels(&self) -> usize {
        1
    }
    /// Every pair's logits in batch order, `[pairs × labels]` row-major.
    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError>;
}

/// candle's cross-encoder. Its weights are immutable tensors, so several instance threads share
/// one `CandleBackend` (one copy of the weights) and run forward passes concurrently.
pub struct CandleBackend {
    model: CrossEncoder,
}

impl CandleBackend {
    /// fp32 with the default kernels (fused on CPU).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self, ModelError> {
        Self::load_with(files, device, Kernels::default())
    }

    pub fn load_with(
        files: &ModelFiles,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            model: CrossEncoder::load_with(files, device, DType::F32, kernels)?,
        })
    }

    /// The kernels the model runs.
    pub fn kernels(&self) -> Kernels {
        self.model.kernels()
    }

    /// Converts the weights to `precision` (see [`CrossEncoder::quantize`]).
    pub fn quantize(&mut self, precision: Precision) -> Result<(), ModelError> {
        self.model.quantize(precision)
    }

    /// Converts the weights through the cache of quantized layers (see
    /// [`CrossEncoder::quantize_cached`]).
    pub fn quantize_cached(&mut self, precision: Precision) -> Result<CacheUse, ModelError> {
        self.model.quantize_cached(precision)
    }

    pub fn precision(&self) -> Precision {
        self.model.precision()
    }

    pub fn info(&self) -> &ModelInfo {
        self.model.info()
    }
}

impl Backend for CandleBackend {
    /// candle runs the packed tokens: a batch costs its real tokens.
    fn is_padded(&self) -> bool {
        false
    }

    fn health(&self) -> Result<(), BackendError> {
        let mut batch = Batch::new();
        batch.push(&[0, 0, 0], &[0, 0, 0]);
        self.predict(&batch).map(|_| ())
    }

    fn labels(&self) -> usize {
        self.model.info().num_labels
    }

    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        self.model
            .logits(batch)
            .map_err(|e| BackendError::Inference(format!("{:#}", anyhow::Error::new(e))))
    }
}
