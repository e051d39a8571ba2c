//! The fused backend: xbench's own CPU kernels ([`crate::kernels`]) over the model laid out by
//! [`FusedBert`], in every precision. Weights are read with candle in f32, then converted once at
//! load (or read from the cache of quantized layers).

use candle_core::{DType, Device};
use xbench_kernels::half::HalfKind;

use super::{Backend, BackendError, BackendKind, CacheUse, Executor};
use crate::batch::Batch;
use crate::model::fused::{FusedBert, IntWidth};
use crate::model::Precision;
use crate::model::{calibration, load_encoder, quant_cache, ModelError, ModelFiles, ModelInfo};
use crate::tokenize::PairTokenizer;

/// A model on xbench's fused CPU kernels.
pub struct FusedBackend {
    model: FusedBert,
    info: ModelInfo,
}

impl FusedBackend {
    /// Loads `files` and converts the encoder's products to `precision`; with `cache`, through the
    /// cache of quantized layers beside the checkpoint (`xbench-<precision>.gguf`: read when it
    /// was made from these weight files by this version of xbench's quantization, else computed
    /// and written; a cache that cannot be read or written is logged and computed around, never
    /// an error).
    pub fn load(
        files: &ModelFiles,
        precision: Precision,
        cache: bool,
    ) -> Result<(Self, CacheUse), ModelError> {
        let (model, info) = load_encoder(files, &Device::Cpu, DType::F32, BackendKind::Fused)?;
        let weights = |source| ModelError::Weights {
            name: files.name.clone(),
            source,
        };
        let mut backend = Self {
            model: model.fused().map_err(weights)?,
            info,
        };
        if !cache || precision == Precision::Fp32 {
            backend.convert(files, precision)?;
            return Ok((backend, CacheUse::None));
        }
        let mut damaged = None;
        match quant_cache::load(files, precision, &mut backend.model) {
            Ok(Some(path)) => {
                backend.info.precision = precision;
                tracing::info!(model = %files.name, path = %path.display(), "read the quantized layers");
                return Ok((backend, CacheUse::Read(path)));
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(model = %files.name, %why, "ignoring a damaged cache of quantized layers");
                damaged = Some(why);
            }
        }
        backend.convert(files, precision)?;
        let saved = quant_cache::save(files, precision, &backend.model);
        Ok((
            backend,
            CacheUse::after_writing(&files.name, saved, damaged),
        ))
    }

    /// Converts the fp32 weights to `precision`. int8 and int4 first run the built-in calibration
    /// pairs ([`calibration::PAIRS`]) in fp32 to measure each product's input ranges, which they
    /// smooth by (and int4 rounds by GPTQ).
    fn convert(&mut self, files: &ModelFiles, precision: Precision) -> Result<(), ModelError> {
        match precision {
            Precision::Fp32 => {}
            Precision::Bf16 => self.model.to_half(HalfKind::Bf16),
            Precision::Fp16 => self.model.to_half(HalfKind::F16),
            Precision::Int8 | Precision::Int4 => {
                let failed = |why: String| ModelError::Calibration {
                    name: files.name.clone(),
                    why,
                };
                let tokenizer = PairTokenizer::load(files, self.info.max_positions, None)
                    .map_err(|e| failed(e.to_string()))?;
                let batch = tokenizer
                    .encode_batch(calibration::PAIRS.iter().copied())
                    .map_err(|e| failed(e.to_string()))?;
                let width = match precision {
                    Precision::Int4 => IntWidth::Int4,
                    _ => IntWidth::Int8,
                };
                self.model.quantize_integer(width, Some(&batch))?;
            }
        }
        self.info.precision = precision;
        Ok(())
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
}

impl Backend for FusedBackend {
    /// The fused pass runs the packed tokens: a batch costs its real tokens.
    fn is_padded(&self) -> bool {
        false
    }

    fn labels(&self) -> usize {
        self.info.num_labels
    }

    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.model
            .forward(batch)
            .map_err(|e| ModelError::from(e).into())
    }

    /// A rayon pool of `threads` threads per instance: the kernels split each product over it.
    fn executor(&self, model: &str, index: usize, threads: usize) -> Executor {
        Executor::threads(model, index, threads)
    }

    fn layer_weight_bytes(&self) -> Option<usize> {
        Some(self.model.layer_weight_bytes())
    }
}
