//! Generative rerankers: a decoder LLM read through a prompt template ([`crate::prompt`]) and scored
//! by its answer tokens' logits at the prompt's last token, on the fused CPU kernels
//! ([`FusedDecoder`], every precision, each layer converted as it is read) or candle's ops
//! ([`CandleDecoder`], any device; fp32, fp16, bf16). Loading resolves the template (the model
//! instance's `template`, else the family's) and the answer tokens' ids in the checkpoint's
//! tokenizer (refused when missing).

use candle_core::Device;
use candle_nn::VarBuilder;

use super::{Backend, BackendError, BackendKind, CacheUse, Executor, ModelSpec};
use crate::batch::Batch;
use crate::model::decoder::{DecoderConfig, DecoderHead, FusedDecoder};
use crate::model::decoder_candle::CandleDecoder;
use crate::model::family::DecoderLayout;
use crate::model::parse_device;
use crate::model::quant_cache::{self, Key};
use crate::model::{calibration, read_text, ModelError, ModelFiles, ModelInfo, Precision};
use crate::prompt::PromptTemplate;
use crate::tokenize::PairTokenizer;

/// A generative reranker on xbench's fused CPU kernels or candle's ops.
pub struct DecoderBackend {
    model: Model,
    info: ModelInfo,
}

enum Model {
    Fused(FusedDecoder),
    Candle {
        model: CandleDecoder,
        device: Device,
    },
}

impl DecoderBackend {
    /// Loads `files` (a checkpoint of a family laid out as `layout`, architecture
    /// `architecture`) as `spec` says, with the tokenizer that builds its prompts.
    pub fn load(
        files: &ModelFiles,
        spec: &ModelSpec,
        layout: &DecoderLayout,
        architecture: &str,
    ) -> Result<(Self, PairTokenizer, CacheUse), super::LoadError> {
        let refuse = |why: String| ModelError::Unsupported {
            name: spec.name.clone(),
            why,
        };
        let text = read_text(&files.config)?;
        let config = DecoderConfig::read(&files.config, &text, layout.arch)?;
        let head = if architecture.ends_with("ForSequenceClassification") {
            DecoderHead::Classifier
        } else {
            DecoderHead::AnswerTokens
        };
        let mut template =
            PromptTemplate::resolve(spec.template.as_deref().unwrap_or(layout.template))
                .map_err(refuse)?;
        if let Some(tokens) = &spec.answer_tokens {
            template.answer_tokens = tokens.clone();
        }
        if spec.instruction.is_some() && !template.takes_instruction() {
            return Err(refuse(format!(
                "instruction is set, and template {} has no {{instruction}} placeholder",
                template.name
            ))
            .into());
        }
        let base = PairTokenizer::load(files, config.max_position_embeddings, None)?;
        let prompt = template.prepare(
            base.inner(),
            spec.max_length,
            config.max_position_embeddings,
        )?;
        let answer_ids = match head {
            DecoderHead::AnswerTokens => template.answer_ids(base.inner()).map_err(refuse)?,
            DecoderHead::Classifier => Vec::new(),
        };
        let weights = |source| ModelError::Weights {
            name: files.name.clone(),
            source,
        };
        let mut cache = CacheUse::None;
        let model = match spec.backend {
            BackendKind::Fused => {
                // int8 and int4 measure their products' input ranges on the built-in
                // calibration pairs, read through the model's prompt.
                let calibration = matches!(spec.quantization, Precision::Int8 | Precision::Int4)
                    .then(|| {
                        let tokenizer = base.clone().with_prompt(prompt.clone(), None);
                        tokenizer.encode_batch(calibration::PAIRS.iter().copied())
                    })
                    .transpose()?;
                let (mut model, used) = load_fused(
                    files,
                    spec,
                    &config,
                    head,
                    &answer_ids,
                    calibration.as_ref(),
                )?;
                cache = used;
                // `XBENCH_SHARE_PREFIX=off` computes every pair's prefix again: for measuring
                // what sharing saves (scripts/compare_generative.py), as XBENCH_SIMD lowers the
                // kernels' level.
                model.share_prefix =
                    std::env::var("XBENCH_SHARE_PREFIX").map_or(true, |v| v != "off");
                Model::Fused(model)
            }
            BackendKind::Candle => {
                let device = parse_device(&spec.device)?;
                let dtype = spec.quantization.candle_dtype().ok_or_else(|| {
                    refuse(format!(
                        "{} runs on backend fused",
                        spec.quantization.name()
                    ))
                })?;
                // SAFETY: as in load_encoder: memory-mapped read-only weight files.
                let vb =
                    unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, dtype, &device) }
                        .map_err(weights)?;
                let model = CandleDecoder::load(vb, &config, head, &answer_ids).map_err(weights)?;
                Model::Candle { model, device }
            }
        };
        let labels = match head {
            DecoderHead::AnswerTokens => template.answer_tokens.clone(),
            DecoderHead::Classifier => config.labels.clone(),
        };
        let info = ModelInfo {
            name: files.name.clone(),
            architecture: architecture.to_string(),
            num_labels: match head {
                DecoderHead::AnswerTokens => answer_ids.len(),
                DecoderHead::Classifier => config.num_labels,
            },
            labels,
            hidden_size: config.hidden_size,
            num_layers: config.num_hidden_layers,
            max_positions: config.max_position_embeddings,
            precision: spec.quantization,
            backend: spec.backend,
            template: Some(template.name.clone()),
        };
        let tokenizer = base.with_prompt(prompt, spec.instruction.clone());
        Ok((Self { model, info }, tokenizer, cache))
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
}

/// The fused decoder of `files`, in `spec`'s precision; with `spec.quantization_cache`, through
/// the cache of quantized layers beside the checkpoint, as the cross-encoders' (read when it was
/// made from these weights, by this xbench, from these calibration tokens; else computed and
/// written; a cache that cannot be read or written is logged and computed around, never an
/// error).
fn load_fused(
    files: &ModelFiles,
    spec: &ModelSpec,
    config: &DecoderConfig,
    head: DecoderHead,
    answer_ids: &[u32],
    calibration: Option<&Batch>,
) -> Result<(FusedDecoder, CacheUse), ModelError> {
    let load = |cached| {
        FusedDecoder::load(
            &files.weights,
            config,
            head,
            answer_ids,
            spec.quantization,
            calibration,
            cached,
        )
        .map_err(|source| ModelError::Weights {
            name: files.name.clone(),
            source,
        })
    };
    if !spec.quantization_cache || spec.quantization == Precision::Fp32 {
        return Ok((load(None)?, CacheUse::None));
    }
    let key = Key {
        files,
        precision: spec.quantization,
        layers: &quant_cache::DECODER,
        calibration: calibration.map(|b| {
            let mut ids = b.input_ids.clone();
            ids.extend(&b.cu_seq_lengths);
            quant_cache::fingerprint(&ids)
        }),
    };
    let mut damaged = None;
    match quant_cache::read_layers(&key, config.num_hidden_layers) {
        Ok(Some((path, layers))) => match load(Some((path.clone(), layers))) {
            Ok(model) => {
                tracing::info!(model = %files.name, path = %path.display(), "read the quantized layers");
                return Ok((model, CacheUse::Read(path)));
            }
            Err(why) => damaged = Some(why.to_string()),
        },
        Ok(None) => {}
        Err(why) => damaged = Some(why),
    }
    if let Some(why) = &damaged {
        tracing::warn!(model = %files.name, %why, "ignoring a damaged cache of quantized layers");
    }
    let model = load(None)?;
    let layers = model
        .layers
        .iter()
        .map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down]);
    let saved = quant_cache::save_layers(&key, layers);
    Ok((model, CacheUse::after_writing(&files.name, saved, damaged)))
}

impl Backend for DecoderBackend {
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
        match &self.model {
            Model::Fused(m) => m.forward(batch).map_err(|e| ModelError::from(e).into()),
            Model::Candle { model, device } => model
                .forward(batch, device)
                .and_then(|l| l.flatten_all())
                .and_then(|l| l.to_vec1::<f32>())
                .map_err(|e| ModelError::from(e).into()),
        }
    }

    /// A rayon pool per instance: the kernels, and candle's CPU ops, split their work over it.
    fn executor(&self, model: &str, index: usize, threads: usize) -> Executor {
        Executor::threads(model, index, threads)
    }

    fn layer_weight_bytes(&self) -> Option<usize> {
        match &self.model {
            Model::Fused(m) => Some(m.layer_weight_bytes()),
            Model::Candle { .. } => None,
        }
    }
}
