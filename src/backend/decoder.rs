//! Generative rerankers on the fused CPU kernels: a decoder LLM ([`FusedDecoder`]) read through a
//! prompt template ([`crate::prompt`]) and scored by its answer tokens' logits at the prompt's last
//! token. Loading resolves the template (the model instance's `template`, else the family's), the
//! answer tokens' ids in the checkpoint's tokenizer (refused when missing), and converts each
//! layer to the serving precision as it is read.

use super::{Backend, BackendError, BackendKind, Executor, ModelSpec};
use crate::batch::Batch;
use crate::model::decoder::{DecoderConfig, DecoderHead, FusedDecoder};
use crate::model::family::{DecoderLayout, Family};
use crate::model::{read_text, ModelError, ModelFiles, ModelInfo};
use crate::prompt::PromptTemplate;
use crate::tokenize::PairTokenizer;

/// A generative reranker on xbench's fused CPU kernels.
pub struct DecoderBackend {
    model: FusedDecoder,
    info: ModelInfo,
}

impl DecoderBackend {
    /// Loads `files` (a checkpoint of `family`, architecture `architecture`) as `spec` says, with
    /// the tokenizer that builds its prompts.
    pub fn load(
        files: &ModelFiles,
        spec: &ModelSpec,
        family: &Family,
        layout: &DecoderLayout,
        architecture: &str,
    ) -> Result<(Self, PairTokenizer), super::LoadError> {
        let refuse = |why: String| ModelError::Unsupported {
            name: spec.name.clone(),
            why,
        };
        if spec.backend != BackendKind::Fused {
            return Err(refuse(format!(
                "generative rerankers ({} family) run on backend fused (device cpu) for now",
                family.name
            ))
            .into());
        }
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
        let model = FusedDecoder::load(
            &files.weights,
            &config,
            head,
            &answer_ids,
            spec.quantization,
        )
        .map_err(|source| ModelError::Weights {
            name: files.name.clone(),
            source,
        })?;
        let labels = match head {
            DecoderHead::AnswerTokens => template.answer_tokens.clone(),
            DecoderHead::Classifier => config.labels.clone(),
        };
        let info = ModelInfo {
            name: files.name.clone(),
            architecture: architecture.to_string(),
            num_labels: model.num_labels(),
            labels,
            hidden_size: config.hidden_size,
            num_layers: config.num_hidden_layers,
            max_positions: config.max_position_embeddings,
            precision: spec.quantization,
            backend: BackendKind::Fused,
            template: Some(template.name.clone()),
        };
        let tokenizer = base.with_prompt(prompt, spec.instruction.clone());
        Ok((Self { model, info }, tokenizer))
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Whether consecutive pairs sharing a prefix compute it once (on by default; off for
    /// measuring what it saves).
    pub fn set_share_prefix(&mut self, share: bool) {
        self.model.share_prefix = share;
    }
}

impl Backend for DecoderBackend {
    fn is_padded(&self) -> bool {
        false
    }

    fn labels(&self) -> usize {
        self.info.num_labels
    }

    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        self.model
            .forward(batch)
            .map_err(|e| ModelError::from(e).into())
    }

    fn executor(&self, model: &str, index: usize, threads: usize) -> Executor {
        Executor::threads(model, index, threads)
    }

    fn layer_weight_bytes(&self) -> Option<usize> {
        Some(self.model.layer_weight_bytes())
    }
}
