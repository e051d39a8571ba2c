//! RoBERTa and its multilingual and French descendants (`XLMRobertaForSequenceClassification`:
//! bge-reranker-base/large/v2-m3, mxbai's v1 rerankers; `RobertaForSequenceClassification`;
//! `CamembertForSequenceClassification`): BERT's layers under `roberta`; positions from
//! `pad_token_id + 1` (transformers' `create_position_ids_from_input_ids` on unpadded pairs); one
//! token type, and tokenizers that pass none; `RobertaClassificationHead` (dense + tanh on `<s>`,
//! then `out_proj`), no pooler. The three differ only in their tokenizers.

use super::{BertLayout, EncoderKind, Family, Head, HeadAct, PairTemplate, TypeIds, WeightNames};
use crate::model::encoder::EncoderConfig;

pub static ROBERTA: Family = Family {
    name: "roberta",
    architectures: &[
        "XLMRobertaForSequenceClassification",
        "RobertaForSequenceClassification",
        "CamembertForSequenceClassification",
    ],
    encoder: EncoderKind::Bert(BertLayout {
        config: EncoderConfig::read,
        position_offset: past_padding,
        token_types: true,
        weights: WeightNames {
            root: "roberta",
            ..super::bert::WEIGHTS
        },
        head: Head {
            dense: "classifier.dense",
            act: HeadAct::Tanh,
            classifier: "classifier.out_proj",
        },
    }),
    template: Some(PairTemplate {
        text: "<s> A </s></s> B </s>",
        type_ids: TypeIds::Zero,
    }),
    tiny_checkpoints: &["tiny-xlm-roberta", "tiny-roberta", "tiny-camembert"],
};

/// Positions start past the padding index.
fn past_padding(c: &EncoderConfig) -> usize {
    c.pad_token_id as usize + 1
}
