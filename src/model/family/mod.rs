//! The architecture registry: one module per family of cross-encoders, each declaring what it reads
//! from `config.json`, where its weights are, how its embeddings count positions and token types,
//! its head, the pair template its tokenizer must produce, and the tiny checkpoint its reference
//! test runs. [`find`] picks the family by the `architectures` entry of `config.json`.
//!
//! Most families share one encoder, post-LayerNorm layers of self-attention and a feed-forward
//! block ([`super::encoder`] in candle), and differ only in what their [`BertLayout`] declares;
//! ModernBERT has its own ([`super::modernbert`]). Both run on xbench's kernels as
//! [`super::fused::FusedBert`]. Adding a family of the shared encoder is one file here, one line
//! in [`REGISTRY`], and one tiny checkpoint with transformers' logits in `tests/data/` (written by
//! `scripts/make_tiny_architectures.py`; `tests/architectures.rs` checks every registered family
//! against its checkpoints on both backends).

mod bert;
mod deberta_v2;
mod distilbert;
mod electra;
mod gemma;
mod modernbert;
mod qwen;
mod roberta;

use std::path::Path;

use super::encoder::EncoderConfig;
use super::ModelError;
use crate::tokenize::PairTokenizer;

/// Every family xbench loads, in the order error messages list them.
pub static REGISTRY: &[&Family] = &[
    &bert::BERT,
    &roberta::ROBERTA,
    &distilbert::DISTILBERT,
    &electra::ELECTRA,
    &modernbert::MODERNBERT,
    &deberta_v2::DEBERTA_V2,
    &qwen::QWEN3,
    &qwen::QWEN2,
    &gemma::GEMMA,
];

/// The family that loads `architecture` (an `architectures` entry of `config.json`).
pub fn find(architecture: &str) -> Option<&'static Family> {
    REGISTRY
        .iter()
        .copied()
        .find(|f| f.architectures.contains(&architecture))
}

/// Every `architectures` value some family loads.
pub fn architectures() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|f| f.architectures.iter().copied())
        .collect()
}

/// One family of cross-encoders: the architectures it loads, its encoder, the pair template its
/// tokenizer must make, and its tiny checkpoints.
#[derive(Debug)]
pub struct Family {
    /// A short name for logs and errors (`bert`, `roberta`).
    pub name: &'static str,
    /// The `architectures` values of `config.json` it loads.
    pub architectures: &'static [&'static str],
    /// Which encoder computes it, and how.
    pub encoder: EncoderKind,
    /// What the tokenizer must make of a pair (cross-encoders; a generative reranker reads a
    /// prompt instead: [`DecoderLayout::template`]).
    pub template: Option<PairTemplate>,
    /// The directories under `tests/data/` of this family's tiny checkpoints, one per entry of
    /// `architectures` in the same order, each with transformers' logits (`reference.json`).
    pub tiny_checkpoints: &'static [&'static str],
}

/// The encoders xbench computes.
// Only ever in statics (the registry): the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum EncoderKind {
    /// BERT's post-LayerNorm layers over absolute position embeddings ([`super::encoder`]), laid
    /// out as the family declares.
    Bert(BertLayout),
    /// ModernBERT's pre-norm layers: rotary positions, global and sliding-window attention, gated
    /// MLP ([`super::modernbert`]).
    ModernBert,
    /// A decoder LLM scored from its last token ([`super::decoder`]): a generative reranker.
    Decoder(DecoderLayout),
}

/// What a family of generative rerankers declares.
#[derive(Debug)]
pub struct DecoderLayout {
    pub arch: super::decoder::DecoderArch,
    /// The prompt template its checkpoints read by default ([`crate::prompt::PromptTemplate`]).
    pub template: &'static str,
}

impl Family {
    /// Whether the family is a generative reranker (a decoder read through a prompt).
    pub fn is_generative(&self) -> bool {
        matches!(self.encoder, EncoderKind::Decoder(_))
    }
}

/// Everything a family of the shared BERT-style encoder declares.
#[derive(Debug)]
pub struct BertLayout {
    /// Reads `config.json` (path, text) into the encoder's config: the family's own key names.
    pub config: fn(&Path, &str) -> Result<EncoderConfig, ModelError>,
    /// How far position ids are shifted from 0 at the first token.
    pub position_offset: fn(&EncoderConfig) -> usize,
    /// Whether the embeddings add a token type table (without one, type ids are ignored).
    pub token_types: bool,
    /// Where the weights are, under transformers' names.
    pub weights: WeightNames,
    /// The classification head on the pair's first token.
    pub head: Head,
}

impl BertLayout {
    /// The longest pair (special tokens included) the position embeddings allow.
    pub fn max_positions(&self, c: &EncoderConfig) -> usize {
        c.max_position_embeddings
            .saturating_sub((self.position_offset)(c))
    }
}

/// Positions from 0 (BERT, DistilBERT, ELECTRA).
pub fn positions_from_zero(_: &EncoderConfig) -> usize {
    0
}

/// The weight names of the shared encoder, as paths (dots allowed) in the checkpoint.
#[derive(Debug)]
pub struct WeightNames {
    /// The encoder's root: `bert`, `roberta`, `distilbert`, `electra`; the embeddings are
    /// `<root>.embeddings`.
    pub root: &'static str,
    /// The layer list under the root (`encoder.layer`: layer `i` is `<root>.encoder.layer.<i>`).
    pub layers: &'static str,
    /// Under the root: the projection from embeddings narrower than the layers to the layers'
    /// width (ELECTRA's `embeddings_project`), where the family has one; read only when
    /// `embedding_size` differs from `hidden_size`.
    pub embedding_projection: Option<&'static str>,
    /// Within a layer: the query, key and value projections.
    pub qkv: [&'static str; 3],
    /// Within a layer: attention's output projection and the LayerNorm after it.
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    /// Within a layer: the feed-forward block's two projections and the LayerNorm after it.
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
}

/// The activation between the head's two dense layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadAct {
    Tanh,
    Relu,
    /// Exact GELU (ELECTRA's head, ModernBERT's by default).
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
    Silu,
}

impl HeadAct {
    /// The activation over a candle tensor.
    pub fn forward(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            HeadAct::Tanh => x.tanh(),
            HeadAct::Relu => x.relu(),
            HeadAct::Gelu => x.gelu_erf(),
            HeadAct::GeluTanh => x.gelu(),
            HeadAct::Silu => x.silu(),
        }
    }

    pub fn apply(self, x: f32) -> f32 {
        use xbench_kernels::math;
        match self {
            HeadAct::Tanh => math::tanh(x),
            HeadAct::Relu => x.max(0.0),
            HeadAct::Gelu => math::gelu_erf(x),
            HeadAct::GeluTanh => math::gelu_tanh(x),
            HeadAct::Silu => x / (1.0 + math::exp(-x)),
        }
    }
}

/// The head: a dense layer and its activation on the first token, then the classifier.
#[derive(Debug)]
pub struct Head {
    /// From the checkpoint's root: `bert.pooler.dense`, `classifier.dense`, `pre_classifier`.
    pub dense: &'static str,
    pub act: HeadAct,
    /// From the checkpoint's root: `classifier`, `classifier.out_proj`; `[num_labels, hidden]`.
    pub classifier: &'static str,
}

/// The token sequence a family's cross-encoder was trained on for a (query, passage) pair. The
/// tokenizer's post-processor (`tokenizer.json`) makes it; the head reads the first token, so a
/// tokenizer that does not open the pair with a special token would score without the token
/// the head was trained on. [`PairTemplate::check`] refuses such a tokenizer at load.
#[derive(Debug)]
pub struct PairTemplate {
    /// The sequence, for messages: `[CLS] A [SEP] B [SEP]`.
    pub text: &'static str,
    /// What the token type ids of the pair are.
    pub type_ids: TypeIds,
}

/// How a family's tokenizer sets token type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeIds {
    /// 0 for the query and its special tokens, 1 for the passage (BERT).
    Segments,
    /// 0 everywhere (one token type).
    Zero,
    /// Whatever the tokenizer sets: the model has no token type table (DistilBERT).
    Ignored,
}

impl TypeIds {
    /// Whether the family's tokenizer class passes type ids to the model when
    /// `tokenizer_config.json` names no `model_input_names` (transformers' class defaults: BERT's
    /// and ELECTRA's do; RoBERTa's, XLM-RoBERTa's, CamemBERT's and DistilBERT's do not, and the
    /// model then reads zeros).
    pub fn passed_by_default(self) -> bool {
        self == TypeIds::Segments
    }
}

impl PairTemplate {
    /// Encodes a probe pair with `tokenizer` and checks that special tokens open and close it.
    /// (transformers' tokenizer classes add them whatever `tokenizer.json` says; xbench reads
    /// `tokenizer.json` as it is, so a file without its template would score other tokens.) Type
    /// ids are not checked: a model scores whichever its tokenizer makes, as transformers does.
    pub fn check(
        &self,
        family: &Family,
        tokenizer: &PairTokenizer,
        path: &Path,
    ) -> Result<(), ModelError> {
        let probe = tokenizer
            .probe("query", "passage")
            .map_err(|e| self.invalid(family, path, format!("cannot encode a pair ({e})")))?;
        let special = |i: usize| probe.special.get(i) == Some(&1);
        if probe.special.is_empty() || !special(0) || !special(probe.special.len() - 1) {
            return Err(self.invalid(
                family,
                path,
                "its post-processor does not wrap a pair in special tokens".to_string(),
            ));
        }
        Ok(())
    }

    fn invalid(&self, family: &Family, path: &Path, what: String) -> ModelError {
        let types = match self.type_ids {
            TypeIds::Segments => "type id 0 for the query, 1 for the passage",
            TypeIds::Zero => "every type id 0",
            TypeIds::Ignored => "type ids unused",
        };
        ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message: format!(
                "{what}; a {} cross-encoder reads a pair as {} ({types}): use the tokenizer.json the model was trained with",
                family.name, self.text
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_architecture_belongs_to_one_family() {
        let all = architectures();
        for a in &all {
            assert_eq!(all.iter().filter(|b| b == &a).count(), 1, "{a}");
            assert!(find(a).is_some(), "{a}");
        }
        assert_eq!(
            find("XLMRobertaForSequenceClassification").map(|f| f.name),
            Some("roberta")
        );
        assert!(find("BertModel").is_none());
        for f in REGISTRY {
            assert_eq!(
                f.tiny_checkpoints.len(),
                f.architectures.len(),
                "{}",
                f.name
            );
        }
        let dirs: Vec<_> = REGISTRY.iter().flat_map(|f| f.tiny_checkpoints).collect();
        for d in &dirs {
            assert_eq!(dirs.iter().filter(|e| e == &d).count(), 1, "{d}");
        }
    }
}
