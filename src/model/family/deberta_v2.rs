//! DeBERTa-v2 and -v3 (`DebertaV2ForSequenceClassification`; mixedbread-ai/mxbai-rerank-base-v1 /
//! -large-v1, DeBERTa-v3 cross-encoders): BERT's post-norm layers under `deberta` with
//! disentangled attention ([`crate::model::deberta`]: content→position and position→content terms
//! over log-bucketed relative positions, shared keys), absolute positions only when
//! `position_biased_input` says so, token types only when `type_vocab_size` is over 0;
//! `ContextPooler` (dense + GELU on `[CLS]`) then `classifier`.

use super::{
    positions_from_zero, BertLayout, EncoderKind, Family, Head, HeadAct, PairTemplate, TypeIds,
    WeightNames,
};
use crate::model::deberta::read_config;

pub static DEBERTA_V2: Family = Family {
    name: "deberta-v2",
    architectures: &["DebertaV2ForSequenceClassification"],
    encoder: EncoderKind::Bert(BertLayout {
        config: read_config,
        position_offset: positions_from_zero,
        token_types: true,
        weights: WeightNames {
            root: "deberta",
            qkv: [
                "attention.self.query_proj",
                "attention.self.key_proj",
                "attention.self.value_proj",
            ],
            ..super::bert::WEIGHTS
        },
        head: Head {
            dense: "pooler.dense",
            act: HeadAct::Gelu,
            classifier: "classifier",
        },
    }),
    template: Some(PairTemplate {
        text: "[CLS] A [SEP] B [SEP]",
        type_ids: TypeIds::Segments,
    }),
    tiny_checkpoints: &["tiny-deberta-v2"],
};
