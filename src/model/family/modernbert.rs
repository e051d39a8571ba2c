//! ModernBERT (`ModernBertForSequenceClassification`; Alibaba-NLP/gte-reranker-modernbert-base,
//! ibm-granite/granite-embedding-reranker-english-r2, the ettin cross-encoders): its own encoder
//! ([`crate::model::modernbert`]: rotary positions, global and sliding-window attention, gated
//! MLP, pre-norm, optional biases; head dense → act → norm → classifier over `cls` or `mean`
//! pooling). Its tokenizers pass no type ids and the model has no type table.

use super::{EncoderKind, Family, PairTemplate, TypeIds};

pub static MODERNBERT: Family = Family {
    name: "modernbert",
    architectures: &["ModernBertForSequenceClassification"],
    encoder: EncoderKind::ModernBert,
    template: Some(PairTemplate {
        text: "[CLS] A [SEP] B [SEP]",
        type_ids: TypeIds::Ignored,
    }),
    tiny_checkpoints: &["tiny-modernbert"],
};
