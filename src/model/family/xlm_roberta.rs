//! XLM-RoBERTa (`XLMRobertaForSequenceClassification`; bge-reranker-base/large/v2-m3, mxbai's v1
//! rerankers): BERT's layers under `roberta`; positions from `pad_token_id + 1` (transformers'
//! `create_position_ids_from_input_ids` on unpadded pairs); one token type;
//! `RobertaClassificationHead` (dense + tanh on `<s>`, then `out_proj`), no pooler.

use super::{Family, Head, HeadAct, PairTemplate, TypeIds, WeightNames};
use crate::model::encoder::EncoderConfig;

pub static XLM_ROBERTA: Family = Family {
    name: "xlm-roberta",
    architectures: &["XLMRobertaForSequenceClassification"],
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
    template: PairTemplate {
        text: "<s> A </s></s> B </s>",
        type_ids: TypeIds::Zero,
    },
    tiny_checkpoint: "tiny-xlm-roberta",
};

/// Positions start past the padding index.
fn past_padding(c: &EncoderConfig) -> usize {
    c.pad_token_id as usize + 1
}
