//! The candle backend: candle's own ops, one tensor op at a time, on any device candle opens
//! (CPU, CUDA, Metal), in fp32, fp16 or bf16 (the whole model loaded in that dtype, as
//! `model.to(torch.bfloat16)` does).

use candle_core::{DType, Device, Tensor};

use super::{Backend, BackendError, BackendKind, Executor};
use crate::batch::Batch;
use crate::model::{load_encoder, CrossEncoder, ModelError, ModelFiles, ModelInfo, Precision};

/// A model on candle's ops. Its weights are immutable tensors, so the instance threads share one
/// `CandleBackend` (one copy of the weights) and run forward passes concurrently.
pub struct CandleBackend {
    model: Box<dyn CrossEncoder>,
    device: Device,
    info: ModelInfo,
}

impl CandleBackend {
    /// Loads `files` onto `device` in `precision`'s dtype; int8 and int4 are the fused backend's.
    pub fn load(
        files: &ModelFiles,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        let dtype = precision
            .candle_dtype()
            .ok_or_else(|| ModelError::Unsupported {
                name: files.name.clone(),
                why: BackendKind::Candle
                    .refuses(precision, "cpu")
                    .unwrap_or_default(),
            })?;
        let (model, info) = load_encoder(files, device, dtype, BackendKind::Candle)?;
        Ok(Self {
            model,
            device: device.clone(),
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Runs `forward` (packed or padded) on a batch and brings the logits to the host in f32.
    fn run(
        &self,
        batch: &Batch,
        forward: fn(&dyn CrossEncoder, &Batch, &Device) -> candle_core::Result<Tensor>,
    ) -> Result<Vec<f32>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let values = forward(self.model.as_ref(), batch, &self.device)
            .and_then(|l| l.to_dtype(DType::F32))
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(ModelError::from)?;
        Ok(values)
    }
}

impl Backend for CandleBackend {
    /// candle runs the packed tokens: a batch costs its real tokens.
    fn is_padded(&self) -> bool {
        false
    }

    fn labels(&self) -> usize {
        self.info.num_labels
    }

    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        self.run(batch, |m, b, d| m.forward(b, d))
    }

    /// candle's CPU ops split their work over the rayon pool they run in: one per instance.
    fn executor(&self, model: &str, index: usize, threads: usize) -> Executor {
        Executor::threads(model, index, threads)
    }

    fn predict_padded(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        self.run(batch, |m, b, d| m.forward_padded(b, d))
    }
}
