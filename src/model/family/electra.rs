//! ELECTRA (`ElectraForSequenceClassification`; cross-encoder/ms-marco-electra-base): BERT's
//! layers under `electra`, with embeddings `embedding_size` wide (128 when `config.json` does not
//! say, as transformers' `ElectraConfig`) projected to `hidden_size` by `embeddings_project` when
//! the two differ; word, position and token type embeddings; `ElectraClassificationHead` (dense +
//! exact GELU on `[CLS]`, then `out_proj`), no pooler.

use std::path::Path;

use serde::Deserialize;

use super::{
    positions_from_zero, BertLayout, EncoderKind, Family, Head, HeadAct, PairTemplate, TypeIds,
    WeightNames,
};
use crate::model::encoder::EncoderConfig;
use crate::model::{parse_json, ModelError};

pub static ELECTRA: Family = Family {
    name: "electra",
    architectures: &["ElectraForSequenceClassification"],
    encoder: EncoderKind::Bert(BertLayout {
        config: read_config,
        position_offset: positions_from_zero,
        token_types: true,
        weights: WeightNames {
            root: "electra",
            embedding_projection: Some("embeddings_project"),
            ..super::bert::WEIGHTS
        },
        head: Head {
            dense: "classifier.dense",
            act: HeadAct::Gelu,
            classifier: "classifier.out_proj",
        },
    }),
    template: Some(PairTemplate {
        text: "[CLS] A [SEP] B [SEP]",
        type_ids: TypeIds::Segments,
    }),
    tiny_checkpoints: &["tiny-electra"],
};

/// The key ELECTRA adds to BERT's.
#[derive(Deserialize)]
struct EmbeddingSize {
    #[serde(default = "default_embedding_size")]
    embedding_size: usize,
}

fn default_embedding_size() -> usize {
    128
}

fn read_config(path: &Path, text: &str) -> Result<EncoderConfig, ModelError> {
    let mut config: EncoderConfig = parse_json(path, text)?;
    let extra: EmbeddingSize = parse_json(path, text)?;
    config.embedding_size = Some(extra.embedding_size);
    config.validate(path)?;
    Ok(config)
}
