//! BERT (`BertForSequenceClassification`, transformers' `models/bert/modeling_bert.py`): positions
//! from 0; word, position and token type embeddings; `BertPooler` (dense + tanh on `[CLS]`) then
//! `classifier`. The demo model (MiniLM) is one.

use super::{
    positions_from_zero, BertLayout, EncoderKind, Family, Head, HeadAct, PairTemplate, TypeIds,
    WeightNames,
};
use crate::model::encoder::EncoderConfig;

/// transformers' `BertModel` weight names (RoBERTa's and ELECTRA's are the same under other roots).
pub(super) const WEIGHTS: WeightNames = WeightNames {
    root: "bert",
    layers: "encoder.layer",
    embedding_projection: None,
    qkv: [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
    ],
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

pub static BERT: Family = Family {
    name: "bert",
    architectures: &["BertForSequenceClassification"],
    encoder: EncoderKind::Bert(BertLayout {
        config: EncoderConfig::read,
        position_offset: positions_from_zero,
        token_types: true,
        weights: WEIGHTS,
        head: Head {
            dense: "bert.pooler.dense",
            act: HeadAct::Tanh,
            classifier: "classifier",
        },
    }),
    template: Some(PairTemplate {
        text: "[CLS] A [SEP] B [SEP]",
        type_ids: TypeIds::Segments,
    }),
    tiny_checkpoints: &["tiny-bert"],
};
